"""tickstream: shared domain code for the producer, the Lambda functions and the API.

Everything here is imported by all three runtimes (on Lambda it ships as a layer), so it must stay light:
no boto3 at import time, no heavy frameworks.
"""
