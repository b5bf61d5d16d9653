"""Push checkpoint folders to the Hugging Face Hub as timm model repos.

    python -m train.push checkpoints/tf_efficientnet_lite0 --repo-id OWNER/tf_efficientnet_lite0
    python -m train.push --all --namespace OWNER          # every checkpoints/* folder, to OWNER/<folder name>
    python -m train.push --all --namespace OWNER --dry-run  # list what would be uploaded; needs no token

The token comes from the HF_TOKEN environment variable or the cached ``hf auth login``; it
is handed to huggingface_hub and never printed, logged or written. Each folder is checked
against its manifest first, and only the files of a checkpoint are uploaded (not a
``resume/`` folder or stray files), after which ``timm.create_model("hf-hub:OWNER/NAME",
pretrained=True)`` loads it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from brainmri.checkpoint import CONFIG, verify_checkpoint
from brainmri.cli import setup_logging
from brainmri.settings import checkpoint_dir, hub_namespace

_logger = logging.getLogger(__name__)

# Left behind by an interrupted training run; never part of a pushed checkpoint.
LEFTOVERS = {"best.safetensors"}


def checkpoint_folders(root: str | Path | None = None) -> list[Path]:
    """Sub-folders of ``root`` (default: ``brainmri.settings.checkpoint_dir()``) that hold a checkpoint (a config.json)."""
    root = Path(checkpoint_dir() if root is None else root)
    folders = sorted(p for p in root.iterdir() if (p / CONFIG).is_file()) if root.is_dir() else []
    if not folders:
        raise ValueError(f"no checkpoint folders (with {CONFIG}) in {root}")
    return folders


def files_to_upload(folder: str | Path) -> list[str]:
    """The files of the checkpoint in ``folder``, after checking it against its manifest.

    Those are its top-level files (config, weights, manifest, model card, metrics, history,
    figures, calibration); hidden files, sub-folders such as ``resume/`` and training leftovers are not.
    """
    folder = Path(folder)
    verify_checkpoint(folder)
    if not (folder / "README.md").is_file():
        raise ValueError(f"checkpoint {folder} has no model card README.md (python -m train.evaluate {folder} --model-card)")
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in LEFTOVERS)


def push_folder(api: HfApi | None, folder: str | Path, repo_id: str, private: bool = False) -> list[str]:
    """Create ``repo_id`` if needed and upload the checkpoint files of ``folder``; dry run when ``api`` is None."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must look like OWNER/NAME, got {repo_id!r}")
    files = files_to_upload(folder)
    _logger.info("%s -> %s: %s", folder, repo_id, ", ".join(files))
    if api is None:
        return files
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), allow_patterns=files, commit_message=f"Upload {Path(folder).name} checkpoint"
    )
    _logger.info("pushed %s", getattr(info, "commit_url", repo_id))
    return files


def hub_api() -> HfApi:
    """An HfApi with the token from HF_TOKEN or the cached login; ValueError when there is none."""
    token = get_token()
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return HfApi(token=token)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder (or --all)")
    parser.add_argument("--repo-id", help="OWNER/NAME; default NAMESPACE/<folder name>")
    parser.add_argument("--all", action="store_true", help="push every checkpoint folder in --root")
    parser.add_argument("--root", default=str(checkpoint_dir()), help="where --all looks for checkpoint folders (default: %(default)s)")
    parser.add_argument("--namespace", default=hub_namespace(), help="Hub user or organisation for default repo ids (default: %(default)s)")
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    args = parser.parse_args(argv)
    if args.all == bool(args.checkpoint):
        parser.error("give one checkpoint folder or --all")
    if args.all and args.repo_id:
        parser.error("--repo-id names one repo; with --all use --namespace")
    try:
        folders = checkpoint_folders(args.root) if args.all else [Path(args.checkpoint)]
        api = None if args.dry_run else hub_api()
        for folder in folders:
            push_folder(api, folder, args.repo_id or f"{args.namespace}/{folder.name}", private=args.private)
    except ValueError as e:
        _logger.error("%s", e)
        return 2
    except HfHubHTTPError as e:  # the message names the request and the Hub's answer, never the token
        _logger.error("the Hub refused: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
