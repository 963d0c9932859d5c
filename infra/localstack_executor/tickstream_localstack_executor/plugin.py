"""plux entry point: ``LAMBDA_RUNTIME_EXECUTOR=local`` selects this executor (see pyproject.toml)."""

from __future__ import annotations

from typing import Any

from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin


class LocalRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = "local"

    def load(self, *args: Any, **kwargs: Any) -> type:
        # Imported lazily, like LocalStack's docker plugin: plugin discovery must stay cheap.
        from tickstream_localstack_executor.executor import LocalRuntimeExecutor

        return LocalRuntimeExecutor
