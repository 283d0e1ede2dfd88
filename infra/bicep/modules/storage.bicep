// A locked-down StorageV2 account: Entra ID only (no shared keys, so no SAS signed with account keys), TLS 1.2,
// HTTPS only, no anonymous blob access, private containers, soft delete. Used twice by main.bicep: for the
// recordings (with the lifecycle rules and the finalization queue) and for the Functions host (AzureWebJobsStorage +
// deployment package).
param location string
param tags object
param name string
param containerNames array

@description('Queues to create (the recordings account: recording-finalize and its -poison queue); empty = none.')
param queueNames array = []

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Geo-redundant by default (recordings are the product); main.bicep passes Standard_LRS for the Functions host account.')
param skuName string = 'Standard_GRS'

@description('Container whose blobs the lifecycle rule manages; empty = no lifecycle rule.')
param lifecycleContainer string = ''

@description('Lifecycle: move blobs to the Cool tier this many days after their last modification.')
@minValue(1)
param coolAfterDays int = 30

// ARM checks every module parameter against its decorators when the deployment starts, whatever expression the
// caller computed it with. So the lifecycle takes the days between Cool and deletion, not the deletion day: main.bicep
// passes recordingsDeleteAfterDays - recordingsCoolAfterDays, and a delete-after that is not larger than the
// cool-after stops the deployment here instead of making a rule whose Cool tier can never apply.
@description('Lifecycle: delete blobs this many days after they move to the Cool tier.')
@minValue(1)
param deleteDaysAfterCool int = 335

@description('Lifecycle: delete chunk blobs (blob index tag chunkTagName == chunkTagValue) this many days after they were created; finished files and documents carry no such tag and keep the cool/delete rule.')
@minValue(1)
param chunkRetentionDays int = 30

// The blob index tag the streamer puts on every chunk it uploads (x-ms-tags on Put Blob). Only the chunks carry it.
@description('Blob index tag name that marks a chunk blob.')
param chunkTagName string = 'recorder-kind'

@description('Value of chunkTagName on a chunk blob.')
param chunkTagValue string = 'chunk'

@minValue(1)
param softDeleteDays int = 7

var deleteAfterDays = coolAfterDays + deleteDaysAfterCool

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:Apps reach storage over its public endpoint (no VNet in this template); auth is Entra ID only, shared keys off
  // checkov:skip=CKV_AZURE_59:Same as CKV_AZURE_35: public endpoint on, but no anonymous access and no shared-key/SAS-by-key access
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in containerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (!empty(lifecycleContainer)) {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'recordings-cool-then-delete'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${lifecycleContainer}/'
              ]
            }
            actions: {
              baseBlob: {
                tierToCool: {
                  daysAfterModificationGreaterThan: coolAfterDays
                }
                delete: {
                  daysAfterModificationGreaterThan: deleteAfterDays
                }
              }
            }
          }
        }
        {
          // Chunks are what the finished files (final/…) are made from, so they may go well before the rule above
          // deletes everything else. A chunk matches both rules: whichever delete condition it meets first removes it.
          // Blob index filters compare for equality only; blobs without the tag (finished files, documents, index
          // and marker blobs) never match this rule.
          name: 'recordings-chunks-expire'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${lifecycleContainer}/'
              ]
              blobIndexMatch: [
                {
                  name: chunkTagName
                  op: '=='
                  value: chunkTagValue
                }
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterCreationGreaterThan: chunkRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    containers
  ]
}

// Queue service and queues (the recordings account only). Messages are small JSON notes ("this call may be ready
// to finalize"); the function app's queue trigger consumes them with its managed identity (RecordingsStorage__*).
resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = if (!empty(queueNames)) {
  parent: account
  name: 'default'
  properties: {
    cors: {
      corsRules: []
    }
  }
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
