"""Control plane: Azure Functions (Python v2) that place and answer calls with media streaming, take ACS callbacks,
and serve recordings. The Functions host imports the root `function_entry.py` (see `settings.ENTRY_SCRIPT`), which
imports `function_app.app`; a root `function_app.py` would be shadowed by this package.
"""
