// Event Grid custom topic for the recorder's own events: one CloudEvent `AcsCallRecorder.RecordingReady` per finished
// recording, published by the function app with its managed identity (EventGrid Data Sender on this topic,
// roles.bicep). Entra ID only: access keys and SAS tokens are refused (disableLocalAuth), so the topic has no secret
// to store or leak. Input is CloudEvents 1.0, which Event Grid delivers only as CloudEvents (docs/deploy.md, "Recording
// events"). The system-assigned identity lets subscribers deliver to keyless destinations (e.g. a storage queue in an
// account with shared keys off) with `--delivery-identity systemassigned`; it holds no role until a subscriber gives it
// one on their destination.
param location string
param tags object
param name string

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  // checkov:skip=CKV_AZURE_193:The function app publishes over the public endpoint (no VNet in this template); local auth is off, Entra ID tokens only
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
output id string = topic.id
output endpoint string = topic.properties.endpoint
output principalId string = topic.identity.principalId
