# azd postdeploy hook (Windows): same as postdeploy.sh.
$ErrorActionPreference = 'Stop'
foreach ($name in 'AZURE_RESOURCE_GROUP', 'EVENTGRID_SYSTEM_TOPIC_NAME', 'FUNCTION_APP_NAME') {
    if (-not [Environment]::GetEnvironmentVariable($name)) { throw "$name is not set: run through azd (azd up / azd deploy)" }
}
$functionName = if ($env:INCOMING_CALL_FUNCTION_NAME) { $env:INCOMING_CALL_FUNCTION_NAME } else { 'IncomingCall' }
$template = Join-Path $PSScriptRoot '..' 'bicep' 'modules' 'incoming-call-subscription.bicep'
$subscriptionArgs = if ($env:AZURE_SUBSCRIPTION_ID) { @('--subscription', $env:AZURE_SUBSCRIPTION_ID) } else { @() }

$attempts = 10
for ($attempt = 1; $attempt -le $attempts; $attempt++) {
    az deployment group create @subscriptionArgs `
        --resource-group $env:AZURE_RESOURCE_GROUP `
        --name incoming-call-subscription `
        --template-file $template `
        --parameters systemTopicName=$env:EVENTGRID_SYSTEM_TOPIC_NAME functionAppName=$env:FUNCTION_APP_NAME functionName=$functionName `
        --only-show-errors --output none
    if ($LASTEXITCODE -eq 0) {
        Write-Host "Event Grid: IncomingCall -> $($env:FUNCTION_APP_NAME)/$functionName"
        exit 0
    }
    # No wait after the last try: nothing follows it but the error.
    if ($attempt -lt $attempts) {
        Write-Host "retrying in 15 s: the function host may still be indexing the new code ($attempt/$attempts)"
        Start-Sleep -Seconds 15
    }
}
throw "could not create the IncomingCall subscription; is '$functionName' deployed? (see docs/deploy.md)"
