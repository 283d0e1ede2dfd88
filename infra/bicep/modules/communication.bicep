// Azure Communication Services. Its immutable resource id is the audience of the JWTs ACS puts on callbacks and on
// the media-streaming WebSocket upgrade, so main.bicep hands it to both apps as ACS_RESOURCE_ID.
param tags object
param name string

@description('Where ACS stores data at rest, e.g. United States, Europe, UK, Australia, Japan. Fixed after creation.')
param dataLocation string

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: name
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

output name string = acs.name
output id string = acs.id
output endpoint string = 'https://${acs.properties.hostName}/'
output immutableResourceId string = acs.properties.immutableResourceId
