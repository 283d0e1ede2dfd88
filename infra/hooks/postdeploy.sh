#!/bin/sh
# azd postdeploy hook: create the Event Grid subscription IncomingCall -> function, now that the function exists.
# Event Grid validates an AzureFunction endpoint at creation, so this cannot be part of `azd provision`.
# azd exports main.bicep's outputs as environment variables; needs the Azure CLI (az login).
set -eu
: "${AZURE_RESOURCE_GROUP:?run through azd (azd up / azd deploy), which sets the main.bicep outputs}"
: "${EVENTGRID_SYSTEM_TOPIC_NAME:?missing main.bicep output}"
: "${FUNCTION_APP_NAME:?missing main.bicep output}"
function_name="${INCOMING_CALL_FUNCTION_NAME:-IncomingCall}"
template="$(dirname "$0")/../bicep/modules/incoming-call-subscription.bicep"

attempts=10
attempt=1
while :; do
  if az deployment group create \
      ${AZURE_SUBSCRIPTION_ID:+--subscription "$AZURE_SUBSCRIPTION_ID"} \
      --resource-group "$AZURE_RESOURCE_GROUP" \
      --name incoming-call-subscription \
      --template-file "$template" \
      --parameters systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" \
                   functionAppName="$FUNCTION_APP_NAME" \
                   functionName="$function_name" \
      --only-show-errors --output none; then
    echo "Event Grid: IncomingCall -> $FUNCTION_APP_NAME/$function_name"
    exit 0
  fi
  if [ "$attempt" -ge "$attempts" ]; then  # no wait after the last try
    echo "could not create the IncomingCall subscription; is '$function_name' deployed? (see docs/deploy.md)" >&2
    exit 1
  fi
  echo "retrying in 15 s: the function host may still be indexing the new code ($attempt/$attempts)"
  attempt=$((attempt + 1))
  sleep 15
done
