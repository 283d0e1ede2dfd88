// Role assignments, least privilege. Built-in role ids:
//   Storage Blob Data Contributor            ba92f5b4-2d11-453d-a403-e96b0029c9fe  (read/write/delete blobs)
//   Storage Blob Data Owner                  b7e6dc6d-f1e8-4753-8033-0f276bb0955b  (Functions host storage)
//   Storage Blob Delegator                   db58b8e5-c6ad-4a2a-8342-4190687cbf4a  (get user delegation key)
//   AcrPull                                  7f951dda-4ed3-4680-a7ca-43fe172d538d
//   Communication and Email Service Owner    09976791-48a7-449e-bb21-39d1a415f350  (Call Automation with Entra ID;
//                                            ACS has no narrower built-in role and does not honour custom roles)
param recordingsStorageAccountName string
param recordingsContainer string
param hostStorageAccountName string
param registryName string
param communicationServiceName string
param streamerPrincipalId string
param functionsPrincipalId string

var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var blobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var blobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var communicationOwner = '09976791-48a7-449e-bb21-39d1a415f350'

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
