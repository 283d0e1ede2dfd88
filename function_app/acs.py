"""Everything that turns our settings and requests into Call Automation SDK objects.

The client is built from endpoint + credential, never `from_connection_string` (which silently forces https and
so cannot reach a loopback simulator). Without ACS_ACCESS_KEY the managed identity is used: Call Automation
accepts Microsoft Entra ID tokens (scope https://communication.azure.com//.default); the identity needs a role on
the ACS resource (see docs/control-plane.md).
"""

from __future__ import annotations

from azure.communication.callautomation import (
    AudioFormat,
    CallAutomationClient,
    CommunicationIdentifier,
    CommunicationUserIdentifier,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    PhoneNumberIdentifier,
    StreamingTransportType,
)
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from common.transport import transport_url
from function_app.settings import Settings

_FORMATS = {16000: AudioFormat.PCM16_K_MONO, 24000: AudioFormat.PCM24_K_MONO}


def build_client(settings: Settings) -> CallAutomationClient:
    if settings.acs_access_key:
        return CallAutomationClient(settings.acs_endpoint, AzureKeyCredential(settings.acs_access_key))
    from azure.identity import DefaultAzureCredential  # only needed in Azure; keeps local start-up light

    credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
    return CallAutomationClient(settings.acs_endpoint, credential)


def call_exists(client: CallAutomationClient, call_id: str) -> bool:
    """Whether ACS still knows the call (GET callConnections/{id}: 404 once it has ended). Other errors raise."""
    try:
        client.get_call_connection(call_id).get_call_properties()
    except ResourceNotFoundError:
        return False
    return True


def streaming_options(settings: Settings, audio_channel: str, sample_rate: int, dtmf: bool) -> MediaStreamingOptions:
    return MediaStreamingOptions(
        transport_url=transport_url(settings.streamer_wss_url, audio_channel),  # the streamer reads the channel back
        transport_type=StreamingTransportType.WEBSOCKET,
        content_type=MediaStreamingContentType.AUDIO,
        audio_channel_type=MediaStreamingAudioChannelType(audio_channel),
        start_media_streaming=True,
        enable_bidirectional=False,
        audio_format=_FORMATS[sample_rate],
        enable_dtmf_tones=True if dtmf else None,
    )


def identifier(raw: str) -> CommunicationIdentifier:
    """A validated target (see `validation.parse_target`): +E164 → phone number, 8:acs:… → ACS user."""
    if raw.startswith("+"):
        return PhoneNumberIdentifier(raw)
    return CommunicationUserIdentifier(raw)
