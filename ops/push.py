"""Push checkpoint folders to the Hugging Face Hub as timm model repos, and the app as a Space.

    python -m ops.push checkpoints/tf_efficientnet_lite0 --repo-id OWNER/tf_efficientnet_lite0
    python -m ops.push --all --namespace OWNER          # every checkpoints/* folder, to OWNER/<folder name>
    python -m ops.push --all --namespace OWNER --dry-run  # list what would be uploaded; needs no token
    python -m ops.push --space OWNER/NAME --namespace OWNER  # the Space: app, package, checkpoints, examples, results

The Space is uploaded with ``upload_folder(repo_type="space")`` from a staging copy of an allow-list
(:data:`SPACE_FILES`, :data:`SPACE_TREES`, the checkpoint folders), so that the Hub stores each binary in
LFS/Xet itself and no test, training-only file or data travels; its README's ``models:`` are rewritten to
``--namespace``. Before anything is sent it checks that each file the Hub would refuse outside LFS is
stored in LFS by ``.gitattributes`` (``git check-attr``), that there is a token, and that the Hub answers.

The token comes from the HF_TOKEN environment variable or the cached ``hf auth login``; it
is handed to huggingface_hub and never printed, logged or written. Each folder is checked
against its manifest first, and only the files of a checkpoint are uploaded (not a
``resume/`` folder or stray files), after which ``timm.create_model("hf-hub:OWNER/NAME",
pretrained=True)`` loads it.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from brainmri.cli import exit_code, setup_logging
from brainmri.models.catalog import checkpoint_folders
from brainmri.models.checkpoint import BEST, CARD, CONFIG, verify_checkpoint
from brainmri.settings import HUB_NAMESPACE_VARIABLE, ROOT, checkpoint_dir, hub_namespace

_logger = logging.getLogger(__name__)

# Left behind by an interrupted training run; never part of a pushed checkpoint.
LEFTOVERS = {BEST}


def checkpoints_to_push(root: str | Path | None = None) -> list[Path]:
    """The checkpoint folders under ``root`` (brainmri.models.catalog.checkpoint_folders; default:
    ``brainmri.settings.checkpoint_dir()``); ValueError when there is none, since pushing nothing is a mistake."""
    folders = checkpoint_folders(root)
    if not folders:
        raise ValueError(f"no checkpoint folders (with {CONFIG}) in {checkpoint_dir() if root is None else root}")
    return folders


def files_to_upload(folder: str | Path) -> list[str]:
    """The files of the checkpoint in ``folder``, after checking it against its manifest.

    Those are its top-level files (config, weights, manifest, model card, metrics, history,
    figures, calibration); hidden files, sub-folders such as ``resume/`` and training leftovers are not.
    """
    folder = Path(folder)
    verify_checkpoint(folder)
    if not (folder / CARD).is_file():
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
    # delete_patterns: the repo becomes this folder, so no file of an earlier push (a calibration.json or outline.json
    # the new manifest does not list) stays beside the new weights; .gitattributes is kept (huggingface_hub's rule).
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=files,
        delete_patterns="*",
        commit_message=f"Upload {Path(folder).name} checkpoint",
    )
    _logger.info("pushed %s", getattr(info, "commit_url", repo_id))
    return files


def hub_api() -> HfApi:
    """An HfApi with the token from HF_TOKEN or the cached login that the Hub answers to; ValueError saying which
    is missing, the token or the Hub, before anything is uploaded."""
    token = get_token()
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    try:
        api.whoami()
    except HfHubHTTPError as e:  # the Hub answered, and refused the token
        raise ValueError(f"the Hub refused the token ({e.response.status_code if e.response is not None else e})") from None
    except (OSError, httpx.HTTPError) as e:  # no network, HF_HUB_OFFLINE=1, DNS, timeout
        raise ValueError(f"the Hub is out of reach ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return api


# ---------------------------------------------------------------- the Space

SPACE_FILES = ["app.py", "requirements.txt", "README.md", ".gitattributes"]  # at the root, each required
SPACE_TREES = ["brainmri", "examples", "results"]  # every file under them, but caches and hidden files
HUB_BINARY_LIMIT = 1_000_000  # bytes: the Hub refuses a binary file above this outside LFS/Xet
HUB_FILE_LIMIT = 10_000_000  # bytes: and any file above this


def _shipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return path.is_file() and "__pycache__" not in parts and path.suffix != ".pyc" and not any(p.startswith(".") for p in parts)


def space_files(root: str | Path = ROOT) -> list[str]:
    """The Space's files, relative to the repository ``root``: :data:`SPACE_FILES`, everything under :data:`SPACE_TREES`,
    and each checkpoint folder's checkpoint files (:func:`files_to_upload`, which checks each against its manifest)."""
    root = Path(root)
    missing = [name for name in SPACE_FILES if not (root / name).is_file()]
    if missing:
        raise ValueError(f"the Space needs {', '.join(missing)} in {root}")
    files = list(SPACE_FILES)
    for tree in SPACE_TREES:
        files += sorted(p.relative_to(root).as_posix() for p in (root / tree).rglob("*") if _shipped(p, root))
    for folder in checkpoints_to_push(root / "checkpoints"):
        files += [f"checkpoints/{folder.name}/{name}" for name in files_to_upload(folder)]
    return files


def is_binary(path: Path) -> bool:
    """Git's rule, which the Hub applies: a NUL byte in the first 8000 bytes."""
    with path.open("rb") as f:
        return b"\0" in f.read(8000)


def hub_would_refuse(path: Path) -> bool:
    """Whether the Hub refuses this file outside LFS/Xet: a binary over 1 MB, or any file over 10 MB."""
    size = path.stat().st_size
    return size > HUB_FILE_LIMIT or (size > HUB_BINARY_LIMIT and is_binary(path))


def not_in_lfs(root: str | Path, files: list[str]) -> list[str]:
    """Those of ``files`` (relative to ``root``, a git work tree) that the Hub would refuse and that no
    ``.gitattributes`` pattern stores in LFS, by ``git check-attr filter``."""
    root = Path(root)
    caught = [name for name in files if hub_would_refuse(root / name)]
    if not caught:
        return []
    try:
        command = ["git", "-C", str(root), "check-attr", "--stdin", "-z", "filter"]
        out = subprocess.run(command, input="\0".join(caught) + "\0", capture_output=True, text=True)
    except FileNotFoundError:
        raise ValueError("checking the Space's LFS patterns needs git (git check-attr)") from None
    if out.returncode:
        raise ValueError(f"git check-attr failed in {root}: {out.stderr.strip()}")
    fields = out.stdout.split("\0")  # path, attribute, value, path, ...
    return [path for path, _, value in zip(fields[0::3], fields[1::3], fields[2::3]) if value != "lfs"]


def with_models(readme: str, names: list[str], namespace: str) -> str:
    """The README with its front matter's ``models:`` list naming ``namespace``/<name> for each of ``names``."""
    block = "models:\n" + "".join(f"  - {namespace}/{name}\n" for name in names)
    new, count = re.subn(r"(?m)^models:\n(?:  - .*\n)*", lambda _: block, readme, count=1)
    if not readme.startswith("---\n") or count != 1:
        raise ValueError("README.md has no front matter with a models: list to fill in")
    return new


def push_space(api: HfApi | None, space_id: str, namespace: str, root: str | Path = ROOT, private: bool = False) -> list[str]:
    """Upload the Space's files (:func:`space_files`) to ``space_id``, its README's models named in ``namespace``;
    dry run when ``api`` is None. Refuses, before uploading anything, a file the Hub would refuse outside LFS."""
    if space_id.count("/") != 1 or not all(space_id.split("/")):
        raise ValueError(f"Space id must look like OWNER/NAME, got {space_id!r}")
    root = Path(root)
    files = space_files(root)
    unstored = not_in_lfs(root, files)
    if unstored:
        raise ValueError(f"the Hub would refuse these outside LFS; add their kind to .gitattributes: {', '.join(unstored)}")
    _logger.info("%s -> Space %s: %d files", root, space_id, len(files))
    if api is None:
        for name in files:
            _logger.info("  %s", name)
        return files
    names = [f.split("/")[1] for f in files if f.startswith("checkpoints/") and f.endswith("/" + CONFIG)]
    with tempfile.TemporaryDirectory(prefix="space-") as staging:
        for name in files:
            (Path(staging) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, Path(staging) / name)
        readme = Path(staging) / "README.md"
        readme.write_text(with_models(readme.read_text(), names, namespace))
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        # The Space pulls the models it does not ship from the Hub: from --namespace's repos, as its README names them.
        api.add_space_variable(space_id, HUB_NAMESPACE_VARIABLE, namespace, description="whose Hub repos the app's models come from")
        info = api.upload_folder(  # delete_patterns: what an earlier publish sent and this one does not goes
            repo_id=space_id,
            repo_type="space",
            folder_path=staging,
            allow_patterns=files,
            delete_patterns="*",
            commit_message="Publish the Space",
        )
    _logger.info("published %s", getattr(info, "commit_url", space_id))
    return files


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder (or --all, or --space)")
    parser.add_argument("--repo-id", help="OWNER/NAME; default NAMESPACE/<folder name>")
    parser.add_argument("--all", action="store_true", help="push every checkpoint folder in --root")
    parser.add_argument("--root", default=str(checkpoint_dir()), help="where --all looks for checkpoint folders (default: %(default)s)")
    parser.add_argument("--namespace", default=hub_namespace(), help="Hub user or organisation for default repo ids (default: %(default)s)")
    parser.add_argument("--space", metavar="OWNER/NAME", help="publish the app as this Space, its README naming --namespace's models")
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    args = parser.parse_args(argv)
    if (args.all + bool(args.checkpoint) + bool(args.space)) != 1:
        parser.error("give one checkpoint folder, --all or --space")
    if args.all and args.repo_id:
        parser.error("--repo-id names one repo; with --all use --namespace")

    def run() -> None:
        if args.space:
            push_space(None if args.dry_run else hub_api(), args.space, args.namespace, private=args.private)
            return
        folders = checkpoints_to_push(args.root) if args.all else [Path(args.checkpoint)]
        api = None if args.dry_run else hub_api()
        for folder in folders:
            push_folder(api, folder, args.repo_id or f"{args.namespace}/{folder.name}", private=args.private)

    try:
        return exit_code(run, _logger)
    except HfHubHTTPError as e:  # the message names the request and the Hub's answer, never the token
        _logger.error("the Hub refused: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
