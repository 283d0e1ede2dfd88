"""Development tooling — Azurite runner, ACS simulator, local functions host, demo. Never imported by product code."""
