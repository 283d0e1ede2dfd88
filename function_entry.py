"""The script the Azure Functions Python worker imports to index the app (app setting
PYTHON_SCRIPT_FILE_NAME=function_entry.py).

It cannot be called function_app.py: the worker imports the script by its stem, and the package `function_app/`
would shadow a root `function_app.py`. The worker looks for exactly one top-level FunctionApp here.
"""

from function_app.app import app

__all__ = ["app"]
