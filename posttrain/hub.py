"""Uploading a saved model to the Hugging Face Hub, failing fast and clearly where the hub is unreachable."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    """push_to_hub cannot reach the hub (offline mode, or no network)."""


def _check_reachable(endpoint: str, timeout: float = 5.0) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError("push_to_hub is set but the hub is off (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE, "
                                  "or train with push_to_hub=False and upload output_dir later with `hf upload`.")
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as err:
        raise HubUnavailableError(f"push_to_hub is set but {endpoint} cannot be reached ({err}). Train with "
                                  "push_to_hub=False and upload output_dir later with `hf upload`.") from err


def push_folder(folder: str | None, repo_id: str, token: str | None = None, commit_message: str = "End of training",
                check_only: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the repo id. ``check_only``:
    only check that the hub can be reached (called before training, so a run never ends in a hang)."""
    from huggingface_hub import HfApi, constants

    _check_reachable(constants.ENDPOINT)
    if check_only:
        return repo_id
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo, folder_path=os.fspath(folder), commit_message=commit_message,
                      ignore_patterns=["checkpoint-*", ".staging/*", "runs/*"])
    return repo
