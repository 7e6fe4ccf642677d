"""The drift stage: is the traffic of the version being served still like its reference?

``monitor`` holds the plug-in interface and registry; ``monitors/`` one module per monitor;
``twosample`` the tests they share; ``windows`` windowing and alarms; ``stage`` the stream handler;
``report`` the Evidently HTML reports.
"""
