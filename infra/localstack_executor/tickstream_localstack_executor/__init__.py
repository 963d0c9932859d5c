"""Host-subprocess Lambda runtime executor for LocalStack (``LAMBDA_RUNTIME_EXECUTOR=local``)."""
