"""What both planes share: the blob layout + manifest contract, the `/ws/<channel>` transport URL, the ACS JWT
verifier, the settings declarations (and the ACS-auth and storage settings themselves), logging conventions.

Product code only; the function deployment ships this package next to `function_app/`.
"""
