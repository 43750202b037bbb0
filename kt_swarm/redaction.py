"""Secrets stay out of what kt-swarm writes: its log lines, its one-line errors, and (refused up front)
its config, from which config.yaml, summary.json, reports and the W&B run are made.

A secret is the value of an environment variable whose name says it is one (WANDB_API_KEY,
HF_TOKEN, AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN, MY_SERVICE_PASSWORD, ...). Ray and W&B read them from the environment,
which is where they belong.
"""
from __future__ import annotations

import logging
import os
import re

from kt_swarm.errors import UserError

# Whole words of the variable's name, so GIT_AUTHOR_NAME or PIP_KEYRING_PROVIDER are not secrets;
# names that point at something (a socket, a file) hold no secret themselves.
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|SECRETS|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE)
NOT_SECRET = re.compile(r"_(SOCK|PATH|FILE|DIR|MODE|PROVIDER|BACKEND|TYPE|HOST|PORT)$", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values are settings, and masking them would garble text


def secrets(environ=None) -> dict[str, str]:
    """{value: variable name} of the secrets in the environment."""
    environ = os.environ if environ is None else environ
    return {v: k for k, v in environ.items()
            if SECRET_NAME.search(k) and not NOT_SECRET.search(k) and len(v) >= MIN_LENGTH
            and not v.startswith(("/", "~")) and v.lower() not in ("disabled", "offline", "online")}


def redact(text: str) -> str:
    for value, name in sorted(secrets().items(), key=lambda item: -len(item[0])):
        text = text.replace(value, f"<${name}>")
    return text


def refuse_secrets_in(raw) -> None:
    """One line, before anything is written, if a config value holds an environment secret."""
    found = secrets()

    def check(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                check(value, f"{where}.{i}")
        elif isinstance(node, str):
            for value, name in found.items():
                if value in node:
                    raise UserError(f"config key '{where}' holds the value of ${name}: keep secrets in the environment, "
                                    f"not in the config (it is saved with the run and sent to W&B)")

    if found:
        check(raw, "")


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
