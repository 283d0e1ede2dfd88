// Container Apps environment + the streamer (WebSocket data plane).
//
// Scaling. ACS holds one WebSocket per call for the whole call. The HTTP scale rule counts requests per 15 s
// window and the TCP rule counts new connections the same way, so a socket is counted once, at upgrade, and a
// replica full of hour-long calls looks idle to both. The work a call costs is CPU (50 JSON frames/s per audio
// stream, up to 4 streams per call when unmixed), so the rule is KEDA's CPU utilization scaler. MAX_ACTIVE_CALLS
// is the per-replica safety cap the streamer enforces while the scaler reacts (estimates and calibration:
// docs/deploy.md, "Scaling the streamer"). minReplicas >= 1: ACS will not wait for a cold start, and the CPU
// scaler cannot scale from zero. Scale-in sends SIGTERM; the streamer then flushes every open
// stream, and terminationGracePeriodSeconds gives it the time that can take (shutdownGraceSeconds below).
param location string
param tags object
param environmentName string
param appName string
param logAnalyticsName string
param applicationInsightsName string
param identityId string
param identityClientId string
param registryServer string

@description('Streamer image; empty on the very first provision (azd builds and pushes it during deploy).')
param image string = ''

param port int = 8080

@minValue(1)
param minReplicas int = 1

@minValue(1)
param maxReplicas int = 10

@description('vCPU per replica (string, Container Apps accepts 0.25 steps).')
param cpu string = '1.0'

param memory string = '2Gi'

@description('Average CPU utilization (%) across replicas above which a replica is added.')
@minValue(10)
@maxValue(90)
param cpuScaleThreshold int = 40

@description('Per-replica cap on concurrent WebSocket sessions (one session per call).')
@minValue(1)
param maxActiveCalls int = 400

@description('MAX_LOOP_LAG_SECONDS: while the event loop runs this late, new calls are shed (503, not ready); 0 = never.')
param maxLoopLagSeconds string = '0.2'

// On SIGTERM the streamer may spend SHUTDOWN_GRACE_SECONDS twice: uvicorn waits up to that long for open sockets to
// close (timeout_graceful_shutdown, streamer/__main__.py), then the lifespan drain flushes and uploads for up to that
// long again, then spools what is left and exits. So the grace period before SIGKILL is 2 x shutdownGraceSeconds +
// shutdownMarginSeconds, and the margin is a parameter because ARM checks module parameters against their
// decorators when the deployment starts: main.bicep passes streamerTerminationGracePeriodSeconds - 2 x
// streamerShutdownGraceSeconds, so a grace period the streamer could outlast stops the deployment.
@description('SHUTDOWN_GRACE_SECONDS: SIGTERM flush and upload budget.')
@minValue(1)
@maxValue(295)
param shutdownGraceSeconds int = 25

@description('Seconds the termination grace period leaves after 2 x shutdownGraceSeconds: spooling the rest, exit.')
@minValue(10)
param shutdownMarginSeconds int = 10

@description('Optional CIDR allow-list for the ingress (e.g. the ACS media ranges); empty = open, JWT still required.')
param allowedIngressCidrs array = []

param storageAccountUrl string
@description('Queue endpoint of the recordings account (the streamer adds finalization notes to recording-finalize).')
param storageQueueUrl string
param recordingsContainer string
param acsResourceId string
param jwtIssuer string
param jwksUrl string
param chunkSeconds string = '10'
param uploadMemoryBytes string = '67108864'
@description('Chunk uploads in flight at once per replica: chunk throughput = this / upload latency.')
param uploadConcurrency string = '32'
@description('WebSocket ping interval and pong timeout (s): a vanished peer is dropped, and flushed, within 2x this.')
param wsPingSeconds string = '20'

param maxFrameBytes string = '65536'
param logLevel string = 'INFO'

// Where chunks go when storage is unreachable: an EmptyDir volume survives container restarts within a replica.
var spoolDir = '/spool'
// Time between SIGTERM and SIGKILL (main.bicep keeps it within 600 s).
var terminationGracePeriodSeconds = (2 * shutdownGraceSeconds) + shutdownMarginSeconds
// Public placeholder image, used only until the first `azd deploy` (or `az containerapp update --image`) sets the
// real one. Those replace the image and nothing else, so the placeholder has to come up healthy under the ingress
// the real image keeps: the ASP.NET sample listens on 8080 (the default of .NET 8+ images), the streamer's port.
// (k8se/quickstart, used before, listens on 80, so nothing answered on 8080 and the first revision never became
// healthy.) It serves no /readyz, so the HTTP probes are set only with the real image; until then Container Apps
// probes the ingress port over TCP (its default), which the placeholder and, after the image swap, the streamer
// pass. `azd up` provisions again after deploying (azure.yaml, workflows), which adds the probes in the same run.
var placeholderImage = 'mcr.microsoft.com/dotnet/samples:aspnetapp'
var usePlaceholder = empty(image)

// The streamer's probes (the real image only, see placeholderImage).
var streamerProbes = [
  {
    type: 'Startup'
    httpGet: {
      path: '/healthz'
      port: port
    }
    // Container Apps caps failureThreshold at 10: up to ~30 s to start.
    initialDelaySeconds: 1
    periodSeconds: 3
    failureThreshold: 10
    timeoutSeconds: 2
  }
  {
    type: 'Liveness'
    httpGet: {
      path: '/healthz'
      port: port
    }
    periodSeconds: 10
    failureThreshold: 3
    timeoutSeconds: 3
  }
  // Readiness is how an overloaded replica sheds (the streamer answers 503 while draining, full or behind): the
  // ingress should stop sending it new calls within seconds of a failover burst, and take it back as soon.
  {
    type: 'Readiness'
    httpGet: {
      path: '/readyz'
      port: port
    }
    periodSeconds: 2
    failureThreshold: 1
    successThreshold: 1
    timeoutSeconds: 3
  }
]

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource streamer 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': 'streamer'
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    managedEnvironmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: port
        transport: 'http'
        allowInsecure: false
        traffic: [
          {
            latestRevision: true
            weight: 100
          }
        ]
        ipSecurityRestrictions: [for (cidr, i) in allowedIngressCidrs: {
          name: 'allow-${i}'
          action: 'Allow'
          ipAddressRange: cidr
        }]
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      secrets: [
        {
          name: 'appinsights-connection-string'
          value: appInsights.properties.ConnectionString
        }
      ]
    }
    template: {
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'streamer'
          image: usePlaceholder ? placeholderImage : image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: [
            {
              name: 'PORT'
              value: string(port)
            }
            {
              name: 'ACS_RESOURCE_ID'
              value: acsResourceId
            }
            {
              name: 'ACS_JWT_ISSUER'
              value: jwtIssuer
            }
            {
              name: 'ACS_JWKS_URL'
              value: jwksUrl
            }
            {
              name: 'AZURE_STORAGE_ACCOUNT_URL'
              value: storageAccountUrl
            }
            {
              name: 'AZURE_STORAGE_QUEUE_URL'
              value: storageQueueUrl
            }
            {
              name: 'AZURE_CLIENT_ID'
              value: identityClientId
            }
            {
              name: 'RECORDINGS_CONTAINER'
              value: recordingsContainer
            }
            {
              name: 'CHUNK_SECONDS'
              value: chunkSeconds
            }
            {
              name: 'SPOOL_DIR'
              value: spoolDir
            }
            {
              name: 'UPLOAD_MEMORY_BYTES'
              value: uploadMemoryBytes
            }
            {
              name: 'UPLOAD_CONCURRENCY'
              value: uploadConcurrency
            }
            {
              name: 'MAX_FRAME_BYTES'
              value: maxFrameBytes
            }
            {
              name: 'MAX_ACTIVE_CALLS'
              value: string(maxActiveCalls)
            }
            {
              name: 'MAX_LOOP_LAG_SECONDS'
              value: maxLoopLagSeconds
            }
            {
              name: 'SHUTDOWN_GRACE_SECONDS'
              value: string(shutdownGraceSeconds)
            }
            {
              name: 'WS_PING_SECONDS'
              value: wsPingSeconds
            }
            {
              name: 'LOG_LEVEL'
              value: logLevel
            }
            {
              name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
              secretRef: 'appinsights-connection-string'
            }
          ]
          probes: usePlaceholder ? [] : streamerProbes
          volumeMounts: [
            {
              volumeName: 'spool'
              mountPath: spoolDir
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'spool'
          storageType: 'EmptyDir'
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'cpu-utilization'
            custom: {
              type: 'cpu'
              metadata: {
                type: 'Utilization'
                value: string(cpuScaleThreshold)
              }
            }
          }
        ]
      }
    }
  }
}

output name string = streamer.name
output fqdn string = streamer.properties.configuration.ingress.fqdn
