// Container registry for the streamer image (azd pushes here). No admin user: the streamer pulls with its
// user-assigned identity (AcrPull, roles.bicep). No anonymous pull either (Basic has none; the explicit setting keeps
// it off should the SKU grow). API 2025-04-01: the first GA version whose RegistryProperties define
// anonymousPullEnabled (2023-07-01 does not: Bicep warned BCP037 on it).
param location string
param tags object
param name string

resource registry 'Microsoft.ContainerRegistry/registries@2025-04-01' = {
  // checkov:skip=CKV_AZURE_139:azd/az acr push from a developer machine or CI; private endpoints need Premium and a VNet
  // checkov:skip=CKV_AZURE_163:Image scanning is Microsoft Defender for Containers, a subscription-level plan, not a template setting
  // checkov:skip=CKV_AZURE_166:Quarantine is a Premium-only feature; Basic keeps the cost of a one-image registry low
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
