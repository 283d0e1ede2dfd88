// Function app (control plane) on a Flex Consumption plan, Python 3.11, user-assigned identity.
// Every app setting is listed literally below; tests/test_infra_settings.py compares the names with
// function_app/settings.py (ENV_VARS minus LOCAL_ONLY) in both directions.
param location string
param tags object
param planName string
param appName string
param identityId string
param identityClientId string
param applicationInsightsName string

@description('Storage account for the Functions host (AzureWebJobsStorage) and the deployment package.')
param hostStorageAccountName string
param hostBlobEndpoint string
param deploymentContainer string

@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Root script the Python worker indexes (function_app/settings.py ENTRY_SCRIPT).')
param scriptFileName string = 'function_entry.py'

param acsEndpoint string
param acsResourceId string
param acsSourceCallerId string
param jwtIssuer string
param jwksUrl string
param streamerWssUrl string
param storageAccountUrl string
@description('Queue endpoint of the recordings account: the finalization queue, for our code and for the queue trigger.')
param storageQueueUrl string
param recordingsContainer string
@description('Endpoint of the recording-events Event Grid topic (RecordingReady is published there).')
param recordingEventsEndpoint string
param allowedTargets string
param answerRecipients string
param defaultAudioChannel string
param defaultSampleRate string
param sasTtlSeconds string
param streamingRestartAttempts string

@description('Entra ID sign-in (App Service Authentication) in front of the app: none, or entraId — every request then needs a signed-in user or an Entra bearer token, except ACS callbacks and the Event Grid webhook, which authenticate themselves. The function key is still required on top.')
@allowed([
  'none'
  'entraId'
])
param signIn string = 'none'
@description('Application (client) id of the Entra app registration users sign in to (signIn = entraId).')
param signInClientId string = ''
@description('Directory (tenant) id of that registration.')
param signInTenantId string = tenant().tenantId
@description('Name of the app setting holding the registration\'s client secret (authorization-code flow); empty = ID tokens only (enable "ID tokens" on the registration).')
param signInClientSecretSettingName string = ''

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption scales per function; zone redundancy is optional, region-dependent and costs always-ready instances
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Must be public: ACS posts callbacks and Event Grid delivers IncomingCall from the internet; code checks ACS JWTs
  // checkov:skip=CKV_AZURE_17:ACS callbacks and Event Grid cannot present client certificates
  // checkov:skip=CKV_AZURE_212:Flex Consumption has no fixed instance count; instances are added on demand
  // checkov:skip=CKV_AZURE_213:Health check is not available on Flex Consumption
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': 'functions'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostBlobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov reads this 'appsettings' resource as if it were the 'web' site config; the checks below do not apply to it:
  // checkov:skip=CKV_AZURE_13:Not site config (false positive); Entra sign-in is the signIn option (authsettingsV2 below); code verifies ACS JWTs and keys
  // checkov:skip=CKV_AZURE_63:Not site config (false positive); HTTP logs go to Application Insights
  // checkov:skip=CKV_AZURE_65:Not site config (false positive); detailed error pages are off by default
  // checkov:skip=CKV_AZURE_66:Not site config (false positive); request tracing goes to Application Insights
  // checkov:skip=CKV_AZURE_80:Not site config (false positive); Python app, no .NET Framework
  // checkov:skip=CKV_AZURE_88:Not site config (false positive); Flex Consumption uses no Azure Files share
  // checkov:skip=CKV_AZURE_222:Not site config (false positive); public access is decided on the site, see above
  parent: site
  name: 'appsettings'
  properties: {
    // Platform settings (read by the Functions host, not by our code).
    AzureWebJobsStorage__accountName: hostStorageAccountName
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    // Settings function_app/settings.py declares (the first five are read by the Python worker or the host).
    PYTHON_SCRIPT_FILE_NAME: scriptFileName
    PYTHON_ENABLE_INIT_INDEXING: '1'
    // The finalization queue trigger's identity-based connection `RecordingsStorage` (QUEUE_CONNECTION), read by the
    // host. Never its connection-string form (the bare `RecordingsStorage` setting, local only).
    RecordingsStorage__queueServiceUri: storageQueueUrl
    RecordingsStorage__credential: 'managedidentity'
    RecordingsStorage__clientId: identityClientId
    ACS_ENDPOINT: acsEndpoint
    ACS_RESOURCE_ID: acsResourceId
    ACS_SOURCE_CALLER_ID: acsSourceCallerId
    ACS_JWT_ISSUER: jwtIssuer
    ACS_JWKS_URL: jwksUrl
    STREAMER_WSS_URL: streamerWssUrl
    CALLBACK_URL: 'https://${site.properties.defaultHostName}/api/callbacks'
    AZURE_STORAGE_ACCOUNT_URL: storageAccountUrl
    AZURE_STORAGE_QUEUE_URL: storageQueueUrl
    AZURE_CLIENT_ID: identityClientId
    RECORDINGS_CONTAINER: recordingsContainer
    RECORDING_EVENTS_ENDPOINT: recordingEventsEndpoint
    ALLOWED_TARGETS: allowedTargets
    ANSWER_RECIPIENTS: answerRecipients
    DEFAULT_AUDIO_CHANNEL: defaultAudioChannel
    DEFAULT_SAMPLE_RATE: defaultSampleRate
    SAS_TTL_SECONDS: sasTtlSeconds
    STREAMING_RESTART_ATTEMPTS: streamingRestartAttempts
  }
}

// Optional Entra ID sign-in (docs/deploy.md#recordings-page-sign-in). ACS posts callbacks with its own JWT and
// Event Grid delivers IncomingCall with the webhook's system key: neither can sign in, so both paths stay open to them
// (the code checks them).
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (signIn == 'entraId') {
  // checkov reads every sites/config resource as the 'web' site config; these checks are about that, not this one:
  // checkov:skip=CKV_AZURE_13:Not site config (false positive); this resource is the App Service Authentication setting
  // checkov:skip=CKV_AZURE_63:Not site config (false positive); HTTP logs go to Application Insights
  // checkov:skip=CKV_AZURE_65:Not site config (false positive); detailed error pages are off by default
  // checkov:skip=CKV_AZURE_66:Not site config (false positive); request tracing goes to Application Insights
  // checkov:skip=CKV_AZURE_80:Not site config (false positive); Python app, no .NET Framework
  // checkov:skip=CKV_AZURE_88:Not site config (false positive); Flex Consumption uses no Azure Files share
  // checkov:skip=CKV_AZURE_222:Not site config (false positive); public access is decided on the site, see above
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/api/callbacks'
        '/runtime/webhooks/eventgrid'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: signInClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${signInTenantId}/v2.0'
          clientSecretSettingName: empty(signInClientSecretSettingName) ? null : signInClientSecretSettingName
        }
        validation: {
          allowedAudiences: [
            'api://${signInClientId}'
            signInClientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

// Deployments use Entra ID (azd / func publish with your az login); basic-auth publishing stays off.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = site.name
output id string = site.id
output baseUrl string = 'https://${site.properties.defaultHostName}'
