"""What both planes share: the blob layout + manifest contract, the ACS JWT verifier, logging conventions.

Product code only; the function deployment ships this package next to `function_app/`.
"""
