// Event Grid system topic on the ACS resource. The IncomingCall subscription lives in
// incoming-call-subscription.bicep: Event Grid validates an AzureFunction endpoint when the subscription is
// created, so it can only be deployed after the function code is published (azd postdeploy hook).
param tags object
param name string
param communicationServiceName string

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: communicationServiceName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: 'global'
  tags: tags
  properties: {
    source: acs.id
    topicType: 'Microsoft.Communication.CommunicationServices'
  }
}

output name string = topic.name
