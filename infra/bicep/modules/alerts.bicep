// Alerts on what the recorder itself cannot repair: a chunk quarantined (it can never land as it is) or audio at
// risk (the disk spool failed, so a chunk is held in memory only). Both are single log lines the streamer writes
// to its console (JSON, one object per line), which Container Apps sends to the Log Analytics workspace.
param location string
param tags object
param logAnalyticsName string
param streamerAppName string
param ruleName string

@description('Where alert emails go; empty = the alert fires in Azure Monitor without notifying anyone.')
param alertEmail string = ''

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${ruleName}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'recorder'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource audioAtRisk 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: ruleName
  location: location
  tags: tags
  properties: {
    displayName: 'Call recorder: audio quarantined or at risk'
    description: 'The streamer quarantined a chunk (kept in its spool, not in storage) or could not spool audio. See the README, "Never losing audio".'
    severity: 1
    enabled: true
    scopes: [
      workspace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: 'ContainerAppConsoleLogs_CL | where ContainerAppName_s == "${streamerAppName}" | where Log_s has "chunk quarantined" or Log_s has "\\"level\\":\\"CRITICAL\\""'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}

output alertRuleName string = audioAtRisk.name
