// Role assignments, least privilege. Built-in role ids:
//   Storage Blob Data Contributor            ba92f5b4-2d11-453d-a403-e96b0029c9fe  (read/write/delete blobs)
//   Storage Blob Data Owner                  b7e6dc6d-f1e8-4753-8033-0f276bb0955b  (Functions host storage)
//   Storage Blob Delegator                   db58b8e5-c6ad-4a2a-8342-4190687cbf4a  (get user delegation key)
//   Storage Queue Data Contributor           974c5e8b-45b9-4653-ba55-5f855dd0fb88  (queue trigger: read, delete,
//                                            create the -poison queue, move messages to it)
//   Storage Queue Data Message Sender        c6a89b2d-59bc-44d0-9896-0f6e12d7b80a  (add messages only)
//   EventGrid Data Sender                    d5a91429-5739-47e2-a06b-3470a27159e7  (publish events to a topic)
//   AcrPull                                  7f951dda-4ed3-4680-a7ca-43fe172d538d
//   Communication and Email Service Owner    09976791-48a7-449e-bb21-39d1a415f350  (Call Automation with Entra ID;
//                                            ACS has no narrower built-in role and does not honour custom roles)
// One custom role: chunkTagWriter (below), because no general built-in role narrower than Storage Blob Data Owner
// can set blob index tags.
param recordingsStorageAccountName string
param recordingsContainer string
@description('The finalization queue in the recordings account (both apps send to it, the function app consumes it).')
param finalizeQueueName string
@description('Its poison queue (the Functions queue trigger moves a message there after its last failed attempt).')
param finalizePoisonQueueName string
@description('The streaming-restart queue (the function app alone sends to it and consumes it) and its poison queue.')
param restartQueueName string
param restartPoisonQueueName string
param recordingEventsTopicName string
param hostStorageAccountName string
param registryName string
param communicationServiceName string
param streamerPrincipalId string
param functionsPrincipalId string

var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var blobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var blobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
var queueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var queueMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var communicationOwner = '09976791-48a7-449e-bb21-39d1a415f350'
var blobTagsWrite = 'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/write'

resource recordingsAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: recordingsStorageAccountName
}

resource recordingsBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: recordingsAccount
  name: 'default'
}

resource recordings 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: recordingsBlobService
  name: recordingsContainer
}

resource recordingsQueueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: recordingsAccount
  name: 'default'
}

resource finalizeQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: recordingsQueueService
  name: finalizeQueueName
}

resource finalizePoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: recordingsQueueService
  name: finalizePoisonQueueName
}

resource restartQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: recordingsQueueService
  name: restartQueueName
}

resource restartPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: recordingsQueueService
  name: restartPoisonQueueName
}

resource recordingEvents 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: recordingEventsTopicName
}

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource registry 'Microsoft.ContainerRegistry/registries@2025-04-01' existing = {
  name: registryName
}

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: communicationServiceName
}

// Streamer: writes chunks and manifests into the recordings container only.
resource streamerRecordings 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordings.id, streamerPrincipalId, blobDataContributor)
  scope: recordings
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
    principalId: streamerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The streamer tags every chunk it uploads (x-ms-tags: recorder-kind=chunk) so that a lifecycle rule can expire
// chunks before finished files. Setting blob index tags, on upload too, needs the data action blobs/tags/write, which
// Storage Blob Data Contributor does not include; the general built-in role that does, Storage Blob Data Owner,
// brings every other blob and container permission with it (docs/deploy.md, "Chunk retention"). So: a custom role
// with that one data action, assignable in this resource group only, assigned on the recordings container.
// Its roleName must be unique in the tenant, hence the resource-group hash.
resource chunkTagWriter 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'acs-recorder-chunk-tag-writer')
  properties: {
    roleName: 'ACS recorder chunk tag writer ${uniqueString(resourceGroup().id)}'
    description: 'Set blob index tags (nothing else); lets the ACS recorder streamer tag the chunks it uploads.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          blobTagsWrite
        ]
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource streamerChunkTags 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordings.id, streamerPrincipalId, chunkTagWriter.name)
  scope: recordings
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', chunkTagWriter.name)
    principalId: streamerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Streamer: "this call may be ready to finalize" notes on the finalization queue; it can add messages, not read them.
resource streamerFinalizeQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(finalizeQueue.id, streamerPrincipalId, queueMessageSender)
  scope: finalizeQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueMessageSender)
    principalId: streamerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Streamer: pulls its image.
resource streamerAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, streamerPrincipalId, acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
    principalId: streamerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: read chunks/manifests, read and write manifest/call-state blobs, in the recordings container only.
resource functionsRecordings 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordings.id, functionsPrincipalId, blobDataContributor)
  scope: recordings
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: user delegation key for read-only SAS links. This action exists only at account scope; the SAS
// can still grant no more than the container-scoped data role above.
resource functionsDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordingsAccount.id, functionsPrincipalId, blobDelegator)
  scope: recordingsAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDelegator)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: sends finalization notes and consumes them with the queue trigger (connection RecordingsStorage): read,
// delete, and on the last failed attempt create the -poison queue and add the message there. Scoped to those two
// queues, not the account: the trigger touches no other queue.
resource functionsFinalizeQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(finalizeQueue.id, functionsPrincipalId, queueDataContributor)
  scope: finalizeQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionsFinalizePoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(finalizePoisonQueue.id, functionsPrincipalId, queueDataContributor)
  scope: finalizePoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: plans streaming restarts (callbacks) and runs them (the StreamingRestart queue trigger), on these two
// queues only; the streamer has no role on them.
resource functionsRestartQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(restartQueue.id, functionsPrincipalId, queueDataContributor)
  scope: restartQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionsRestartPoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(restartPoisonQueue.id, functionsPrincipalId, queueDataContributor)
  scope: restartPoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: publishes AcsCallRecorder.RecordingReady to the recording-events topic (Entra ID; the topic has no keys).
resource functionsRecordingEvents 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordingEvents.id, functionsPrincipalId, eventGridDataSender)
  scope: recordingEvents
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions host: AzureWebJobsStorage (keys, leases) and the deployment package, in its own account.
resource functionsHostStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostAccount.id, functionsPrincipalId, blobDataOwner)
  scope: hostAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwner)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Functions: create/answer calls and start media streaming through Call Automation with an Entra ID token.
resource functionsCallAutomation 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(acs.id, functionsPrincipalId, communicationOwner)
  scope: acs
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', communicationOwner)
    principalId: functionsPrincipalId
    principalType: 'ServicePrincipal'
  }
}
