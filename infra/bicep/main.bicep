// ACS live call recorder: everything in one resource group, created here.
//
// Subscription scope, so one `az deployment sub create` (or `azd provision`) creates the resource group and its
// contents, and `azd down` / deleting the group removes it all. Each module below is one resource family.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('Environment name (azd sets it); part of every resource name.')
param environmentName string

@minLength(1)
@description('Region for everything except ACS and its system topic, which are global. Must offer Flex Consumption.')
param location string

@description('Resource group to create; default rg-<environmentName>.')
param resourceGroupName string = ''

@description('ACS data-at-rest location (fixed after creation).')
param acsDataLocation string = 'United States'

param recordingsContainer string = 'recordings'

@description('Lifecycle: move recordings to the Cool tier after this many days without modification.')
@minValue(1)
param recordingsCoolAfterDays int = 30

@description('Lifecycle: delete recordings after this many days; must be larger than recordingsCoolAfterDays, or the deployment stops (storage.bicep, deleteDaysAfterCool).')
@minValue(2)
param recordingsDeleteAfterDays int = 365

@description('Lifecycle: delete chunk blobs (blob index tag recorder-kind=chunk, set by the streamer) this many days after they were created; finished files keep the rule above. Past recordingsDeleteAfterDays it has no effect.')
@minValue(1)
param chunkRetentionDays int = 30

@description('Streamer image; empty until the first deploy (azd passes SERVICE_STREAMER_IMAGE_NAME).')
param streamerImage string = ''

@minValue(1)
param streamerMinReplicas int = 1

@minValue(1)
param streamerMaxReplicas int = 10

@description('Per-replica cap on concurrent calls (WebSocket sessions) the streamer accepts.')
@minValue(1)
param streamerMaxActiveCalls int = 400

@description('Event-loop lag (seconds, a decimal string) beyond which a streamer replica sheds new calls; 0 = never.')
param streamerMaxLoopLagSeconds string = '0.2'

@minValue(10)
@maxValue(90)
param streamerCpuScaleThreshold int = 40

@description('Streamer SIGTERM flush budget (SHUTDOWN_GRACE_SECONDS); the streamer may spend it twice, see below.')
@minValue(1)
@maxValue(295)
param streamerShutdownGraceSeconds int = 25

@description('Time between SIGTERM and SIGKILL; at least 2 x streamerShutdownGraceSeconds + 10, or the deployment stops (containerapps.bicep, shutdownMarginSeconds).')
@minValue(12)
@maxValue(600)
param streamerTerminationGracePeriodSeconds int = 60

@description('Optional CIDR allow-list for the streamer ingress (e.g. the ACS media ranges).')
param streamerAllowedIngressCidrs array = []

@description('E.164 number owned by this ACS resource, shown as caller id on outbound PSTN calls.')
param acsSourceCallerId string = ''

@description('Comma-separated E.164 prefixes (+44,+1555) or raw ids POST /api/calls may dial; empty = any (toll-fraud risk).')
param allowedTargets string = ''

@description('Comma-separated numbers / raw ids whose incoming calls are answered and recorded; empty = all.')
param answerRecipients string = ''

@allowed([
  'mixed'
  'unmixed'
])
param defaultAudioChannel string = 'mixed'

@allowed([
  '16000'
  '24000'
])
param defaultSampleRate string = '16000'

@description('Lifetime of the read-only SAS links retrieval returns.')
param sasTtlSeconds string = '900'

@description('Tries to restart media streaming that failed (or stopped unasked) while the call is connected, per outage; 0 = never.')
@allowed([
  '0'
  '1'
  '2'
  '3'
  '4'
  '5'
])
param streamingRestartAttempts string = '3'

@description('Root script the Functions Python worker indexes (a root function_app.py would be shadowed by the package).')
param functionsScriptFileName string = 'function_entry.py'

param incomingCallFunctionName string = 'IncomingCall'

@description('Email for the "audio quarantined or at risk" alert; empty = the alert fires without notifying anyone.')
param alertEmail string = ''

@description('Entra ID sign-in in front of the function app (the recordings page and the API): none or entraId.')
@allowed([
  'none'
  'entraId'
])
param signIn string = 'none'

@description('Application (client) id of the Entra app registration for signIn = entraId.')
param signInClientId string = ''

@description('App setting holding that registration\'s client secret; empty = ID tokens only.')
param signInClientSecretSettingName string = ''

@description('Create the IncomingCall Event Grid subscription. Only after the function code is published.')
param deployIncomingCallSubscription bool = false

// The ACS JWT issuer and JWKS (same values as common/acs_jwt.py defaults).
var acsJwtIssuer = 'https://acscallautomation.communication.azure.com'
var acsJwksUrl = 'https://acscallautomation.communication.azure.com/calling/keys'

var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var deploymentContainer = 'app-package'
// The finalization queue (common/layout.py FINALIZE_QUEUE) and the poison queue the Functions queue trigger moves a
// message to after its last failed attempt (<queue>-poison). Created here so both can be the scope of a role.
var finalizeQueue = 'recording-finalize'
var finalizePoisonQueue = 'recording-finalize-poison'
// The control plane's own queue of streaming restarts (common/layout.py STREAMING_RESTART_QUEUE) and its poison queue.
var restartQueue = 'streaming-restart'
var restartPoisonQueue = 'streaming-restart-poison'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    streamerIdentityName: 'id-streamer-${token}'
    functionsIdentityName: 'id-func-${token}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${token}'
    applicationInsightsName: 'appi-${token}'
  }
}

module recordingsStorage 'modules/storage.bicep' = {
  name: 'recordings-storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'strec${token}'
    containerNames: [
      recordingsContainer
    ]
    lifecycleContainer: recordingsContainer
    coolAfterDays: recordingsCoolAfterDays
    // A difference, so that the module's @minValue(1) stops a deployment whose deletion would not follow the Cool tier.
    deleteDaysAfterCool: recordingsDeleteAfterDays - recordingsCoolAfterDays
    chunkRetentionDays: chunkRetentionDays
    queueNames: [
      finalizeQueue
      finalizePoisonQueue
      restartQueue
      restartPoisonQueue
    ]
  }
}

module hostStorage 'modules/storage.bicep' = {
  name: 'functions-host-storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'stfn${token}'
    containerNames: [
      deploymentContainer
    ]
    // Host state and the deployment package are reproducible: no geo replication needed.
    skuName: 'Standard_LRS'
  }
}

module communication 'modules/communication.bicep' = {
  name: 'communication'
  scope: rg
  params: {
    tags: tags
    name: 'acs-${token}'
    dataLocation: acsDataLocation
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    tags: tags
    name: 'evgt-acs-${token}'
    communicationServiceName: communication.outputs.name
  }
}

module recordingEvents 'modules/recording-events.bicep' = {
  name: 'recording-events'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'evgt-rec-${token}'
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'cr${token}'
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    recordingsStorageAccountName: recordingsStorage.outputs.name
    recordingsContainer: recordingsContainer
    finalizeQueueName: finalizeQueue
    finalizePoisonQueueName: finalizePoisonQueue
    restartQueueName: restartQueue
    restartPoisonQueueName: restartPoisonQueue
    recordingEventsTopicName: recordingEvents.outputs.name
    hostStorageAccountName: hostStorage.outputs.name
    registryName: registry.outputs.name
    communicationServiceName: communication.outputs.name
    streamerPrincipalId: identities.outputs.streamerPrincipalId
    functionsPrincipalId: identities.outputs.functionsPrincipalId
  }
}

module streamer 'modules/containerapps.bicep' = {
  name: 'streamer'
  scope: rg
  params: {
    location: location
    tags: tags
    environmentName: 'cae-${token}'
    appName: 'ca-streamer-${token}'
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityId: identities.outputs.streamerId
    identityClientId: identities.outputs.streamerClientId
    registryServer: registry.outputs.loginServer
    image: streamerImage
    minReplicas: streamerMinReplicas
    maxReplicas: streamerMaxReplicas
    maxActiveCalls: streamerMaxActiveCalls
    maxLoopLagSeconds: streamerMaxLoopLagSeconds
    cpuScaleThreshold: streamerCpuScaleThreshold
    shutdownGraceSeconds: streamerShutdownGraceSeconds
    // What the grace period leaves after the streamer's longest shutdown; the module's @minValue stops a deployment
    // whose grace period the streamer could outlast (SIGKILL mid-flush).
    shutdownMarginSeconds: streamerTerminationGracePeriodSeconds - (2 * streamerShutdownGraceSeconds)
    allowedIngressCidrs: streamerAllowedIngressCidrs
    storageAccountUrl: recordingsStorage.outputs.blobEndpoint
    storageQueueUrl: recordingsStorage.outputs.queueEndpoint
    recordingsContainer: recordingsContainer
    acsResourceId: communication.outputs.immutableResourceId
    jwtIssuer: acsJwtIssuer
    jwksUrl: acsJwksUrl
  }
  dependsOn: [
    roles
  ]
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    streamerAppName: 'ca-streamer-${token}'
    ruleName: 'alert-audio-at-risk-${token}'
    alertEmail: alertEmail
  }
}

module functions 'modules/functions.bicep' = {
  name: 'functions'
  scope: rg
  params: {
    location: location
    tags: tags
    planName: 'plan-${token}'
    appName: 'func-${token}'
    identityId: identities.outputs.functionsId
    identityClientId: identities.outputs.functionsClientId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    hostStorageAccountName: hostStorage.outputs.name
    hostBlobEndpoint: hostStorage.outputs.blobEndpoint
    deploymentContainer: deploymentContainer
    scriptFileName: functionsScriptFileName
    acsEndpoint: communication.outputs.endpoint
    acsResourceId: communication.outputs.immutableResourceId
    acsSourceCallerId: acsSourceCallerId
    jwtIssuer: acsJwtIssuer
    jwksUrl: acsJwksUrl
    streamerWssUrl: 'wss://${streamer.outputs.fqdn}/ws'
    storageAccountUrl: recordingsStorage.outputs.blobEndpoint
    storageQueueUrl: recordingsStorage.outputs.queueEndpoint
    recordingsContainer: recordingsContainer
    recordingEventsEndpoint: recordingEvents.outputs.endpoint
    allowedTargets: allowedTargets
    answerRecipients: answerRecipients
    defaultAudioChannel: defaultAudioChannel
    defaultSampleRate: defaultSampleRate
    sasTtlSeconds: sasTtlSeconds
    streamingRestartAttempts: streamingRestartAttempts
    signIn: signIn
    signInClientId: signInClientId
    signInClientSecretSettingName: signInClientSecretSettingName
  }
  dependsOn: [
    roles
  ]
}

module incomingCall 'modules/incoming-call-subscription.bicep' = if (deployIncomingCallSubscription) {
  name: 'incoming-call-subscription'
  scope: rg
  params: {
    systemTopicName: eventGrid.outputs.name
    functionAppName: functions.outputs.name
    functionName: incomingCallFunctionName
  }
}

// Outputs: URLs and names only, no keys or connection strings. azd stores them in .azure/<env>/.env.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output FUNCTION_APP_NAME string = functions.outputs.name
output FUNCTION_BASE_URL string = functions.outputs.baseUrl
output STREAMER_APP_NAME string = streamer.outputs.name
output STREAMER_WSS_URL string = 'wss://${streamer.outputs.fqdn}/ws'
output RECORDINGS_STORAGE_ACCOUNT_URL string = recordingsStorage.outputs.blobEndpoint
output RECORDINGS_STORAGE_QUEUE_URL string = recordingsStorage.outputs.queueEndpoint
output RECORDINGS_CONTAINER string = recordingsContainer
output RECORDINGS_FINALIZE_QUEUE string = finalizeQueue
output RECORDING_EVENTS_ENDPOINT string = recordingEvents.outputs.endpoint
output RECORDING_EVENTS_TOPIC_NAME string = recordingEvents.outputs.name
output RECORDING_EVENTS_TOPIC_ID string = recordingEvents.outputs.id
output RECORDING_EVENTS_TOPIC_PRINCIPAL_ID string = recordingEvents.outputs.principalId
output ACS_ENDPOINT string = communication.outputs.endpoint
output EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output INCOMING_CALL_FUNCTION_NAME string = incomingCallFunctionName
output RECORDINGS_PAGE_URL string = '${functions.outputs.baseUrl}/api/ui'
