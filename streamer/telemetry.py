"""OpenTelemetry export to Application Insights, only when a connection string is configured."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def setup_telemetry(connection_string: str | None) -> bool:
    if not connection_string:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(connection_string=connection_string, logger_name="streamer")
    log.info("exporting telemetry to Application Insights")
    return True
