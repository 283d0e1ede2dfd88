// Routes Microsoft.Communication.IncomingCall from the ACS system topic to the IncomingCall function.
// Deploy AFTER the function code is published (the azd postdeploy hook, or step 4 of docs/deploy.md): creating an
// AzureFunction subscription fails while the function does not exist yet.
param systemTopicName string
param functionAppName string
param functionName string = 'IncomingCall'

@description('An incoming call must be answered within seconds; retrying for longer than this is pointless.')
@minValue(1)
param eventTimeToLiveInMinutes int = 1

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'incoming-call-to-function'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/${functionName}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Communication.IncomingCall'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 5
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
  }
}

output name string = subscription.name
