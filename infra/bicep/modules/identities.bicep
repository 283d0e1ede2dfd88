// User-assigned managed identities: one per app, so each gets only the roles it needs (see roles.bicep).
param location string
param tags object
param streamerIdentityName string
param functionsIdentityName string

resource streamer 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: streamerIdentityName
  location: location
  tags: tags
}

resource functions 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionsIdentityName
  location: location
  tags: tags
}

output streamerId string = streamer.id
output streamerClientId string = streamer.properties.clientId
output streamerPrincipalId string = streamer.properties.principalId
output functionsId string = functions.id
output functionsClientId string = functions.properties.clientId
output functionsPrincipalId string = functions.properties.principalId
