"""Start the `tritonserver` binary shipped in the nvidia-pytriton wheel on free ports, with the
python backend wired to this interpreter, and wait until the models are ready.

The python backend's stub links against libpython, so LD_LIBRARY_PATH gets this interpreter's
lib dir; the models import this project and its dependencies, so PYTHONPATH gets the repo and
the venv's site-packages, and PATH starts with the venv's bin (the stub's Python is found there).

Which interest model Triton serves: the checked-in repository (deploy/triton/models) carries the
shipped one; given another artifact (a var's own, from `recmesh train`), a copy of that
repository is assembled in the working folder with the artifact in interest_encoder's version
folder (where interest_encoder and item_encoder load it) and its version stamped in
interest_encoder's config. Which text model text_encoder serves: the var's own (fine-tuned by
`recmesh train`, recmesh.common.paths.served_text_model) when it has one, named in
text_encoder's model_dir and model_name parameters (onnx-fp32 over that folder, as the catalog
was encoded), else the bundled one (model_dir left empty). Nothing under deploy/ is written."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from recmesh.common.local import REPO, die_with_parent, free_port, stop_process
from recmesh.common.paths import (
    SHIPPED_ARTIFACT,
    SHIPPED_MODEL_REPOSITORY,
    bundled_text_model,
    interest_variant_artifacts,
    served_text_model,
    var_paths,
)
from recmesh.common.paths import text_model_name as paths_text_model_name

MODEL_REPOSITORY = SHIPPED_MODEL_REPOSITORY
GPU_PROFILE = REPO / "deploy" / "triton" / "gpu"
MODELS = ("text_encoder", "interest_encoder", "item_encoder")


def pytriton_dist() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_backends(workdir: Path) -> Path:
    """A backend directory whose python backend carries the stub for this Python version."""
    dist = pytriton_dist()
    backends = workdir / "backends"
    python_backend = backends / "python"
    stub = dist / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no python backend stub for Python {sys.version[:4]}")
    if not (python_backend / "triton_python_backend_stub").is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(dist / "backends", backends)
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
    return backends


def gpu_repository(workdir: Path, source: Path = MODEL_REPOSITORY) -> Path:
    """The model repository with each model's GPU config (deploy/triton/gpu/<model>.config.pbtxt)
    in place of its CPU one."""
    repo = workdir / "models-gpu"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(source, repo)
    for config in GPU_PROFILE.glob("*.config.pbtxt"):
        shutil.copy2(config, repo / config.name.removesuffix(".config.pbtxt") / "config.pbtxt")
    return repo


def interest_artifact_in(repository: Path) -> Path:
    """Where the interest model's weights sit in a model repository: interest_encoder's version
    folder (item_encoder's config names the same file)."""
    return repository / SHIPPED_ARTIFACT.relative_to(SHIPPED_MODEL_REPOSITORY)


def stamp_text_model(config: Path, model_dir: Path, name: str) -> None:
    """text_encoder's config (a config.pbtxt) set to serve the model folder `model_dir` under
    `name`. ValueError naming the file when it lacks either parameter."""
    if any(ch.isspace() or ch == '"' for ch in str(model_dir)):
        raise ValueError(f"{model_dir}: a text model path with whitespace or quotes cannot be served by Triton")
    text = config.read_text()
    for key, value in (("model_dir", str(model_dir)), ("model_name", name)):
        pattern = rf'(key: "{key}", value: \{{ string_value: )"[^"]*"'
        text, n = re.subn(pattern, lambda m, v=value: f'{m.group(1)}"{v}"', text)
        if n != 1:
            raise ValueError(f"{config}: no {key} parameter to stamp")
    config.write_text(text)


def stamp_interest_versions(config: Path, versions: dict[int, tuple[str, str]]) -> None:
    """interest_encoder's config (a config.pbtxt) naming what each Triton version folder serves:
    {number: (artifact version, item space)} as "1=NAME:SPACE;2=..." (the model refuses a
    mismatch; the encoder reads it). ValueError naming the file without the parameter."""
    from recmesh.models.interest.versions import format_versions

    value = format_versions(versions)
    pattern = r'(key: "versions", value: \{ string_value: )"[^"]*"'
    text, n = re.subn(pattern, lambda m: f'{m.group(1)}"{value}"', config.read_text())
    if n != 1:
        raise ValueError(f"{config}: no versions parameter to stamp")
    config.write_text(text)


def assemble_repository(dest: Path, artifact: Path, source: Path = MODEL_REPOSITORY,
                        text_model: Path | None = None, text_model_name: str | None = None,
                        interest_variants: list[Path] | tuple[Path, ...] = ()) -> Path:
    """A copy of `source` at `dest` serving `artifact`: the artifact in interest_encoder's version
    folder 1 (the default, whose item tower item_encoder serves too), its version stamped in
    interest_encoder's config (the model refuses a mismatch); each of interest_variants (further
    interest models for experiments) in version folders 2, 3, ... in order, every folder's
    artifact version and item space stamped in the config's "versions" (Triton loads all of
    them: version_policy all; the encoder names one per request). With text_model (a Hugging Face
    folder: a var's fine-tuned language model), text_encoder's config names it (model_dir, and
    model_name: text_model_name, default from the folder). Built beside `dest` and swapped in,
    so a failed build leaves no half repository. ValueError for two artifacts of one version."""
    from recmesh.models.interest.served import artifact_identity, artifact_version, servable_variants, stamp_version

    staging = dest.with_name(f"{dest.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", SHIPPED_ARTIFACT.name))
    weights = interest_artifact_in(staging)  # <model>/<version>/<file>
    shutil.copy2(artifact, weights)
    config = weights.parent.parent / "config.pbtxt"
    stamp_version(config, artifact_version(artifact))
    versions = {}
    # A variant that no longer loads would stop Triton (and with it the default model): left out.
    served = [(Path(artifact), artifact_identity(artifact)), *servable_variants(list(interest_variants)).items()]
    for number, (path, (name, space)) in enumerate(served, start=1):
        if name in {v[0] for v in versions.values()}:
            raise ValueError(f"{path}: interest model version {name!r} is served already")
        versions[number] = (name, space)
        if number > 1:
            folder = weights.parent.parent / str(number)
            folder.mkdir()
            shutil.copy2(weights.parent / "model.py", folder / "model.py")
            shutil.copy2(path, folder / weights.name)
    stamp_interest_versions(config, versions)
    if text_model is not None:
        stamp_text_model(staging / "text_encoder" / "config.pbtxt", Path(text_model).absolute(),
                         text_model_name or paths_text_model_name(Path(text_model)))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    libdirs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_dist().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if p)
    paths = [str(REPO), *site.getsitepackages(), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = ":".join(p for p in paths if p)
    # The stub finds its Python through PATH (as pytriton does it): put this venv's first.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = sys.prefix
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # no __pycache__ in the model repository (deploy/ stays unwritten)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per model instance; more collapse under contention
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.update(extra or {})
    return env


@dataclass
class TritonServer:
    workdir: Path
    model_repository: Path = MODEL_REPOSITORY
    models: tuple[str, ...] = MODELS
    # The interest model to serve (None: the one model_repository ships), from a copy of
    # model_repository assembled in workdir/models.
    interest_model: Path | None = None
    # Further interest models for experiments' variants (Triton versions 2, 3, ...). None: when
    # workdir is a var's Triton folder (VarPaths.triton), the var's (interest_variant_artifacts).
    interest_variants: list[Path] | None = None
    # The text model text_encoder serves (a Hugging Face folder). None: when workdir is a var's
    # Triton folder (VarPaths.triton), the var's served text model (its fine-tuned one, else the
    # bundled one); otherwise the one model_repository's config names.
    text_model: Path | None = None
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    # "cpu" serves deploy/triton/models as is; "gpu" swaps in deploy/triton/gpu's configs.
    profile: str = "cpu"
    proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def repository(self) -> Path:
        """The model repository to serve: always a copy in workdir/models (3 MB, milliseconds),
        serving interest_model (default: the one model_repository ships). Never model_repository
        itself: Triton's python backend writes __pycache__ beside each model.py (its embedded
        interpreter ignores PYTHONDONTWRITEBYTECODE), and the source tree is not written at run
        time."""
        repo = self.model_repository
        artifact = self.interest_model if self.interest_model is not None else interest_artifact_in(repo)
        text_model = self.served_text_model()
        repo = assemble_repository(self.workdir / "models", Path(artifact), repo, text_model,
                                   interest_variants=self.served_interest_variants())
        if self.profile != "gpu":
            return repo
        repo = gpu_repository(self.workdir, repo)
        if text_model is not None:  # the GPU profile's config replaced the stamped one
            stamp_text_model(repo / "text_encoder" / "config.pbtxt", text_model.absolute(),
                             paths_text_model_name(text_model))
        return repo

    def served_interest_variants(self) -> list[Path]:
        """The further interest models to serve (see `interest_variants`)."""
        if self.interest_variants is not None:
            return list(self.interest_variants)
        var = self.workdir.parent
        if var_paths(var).triton.absolute() != self.workdir.absolute():
            return []
        return interest_variant_artifacts(var_paths(var).interest_variants)

    def served_text_model(self) -> Path | None:
        """The text model folder to name in text_encoder's config (see `text_model`); None:
        leave the repository's config as it is (the bundled model)."""
        if self.text_model is not None:
            return Path(self.text_model)
        var = self.workdir.parent
        if var_paths(var).triton.absolute() != self.workdir.absolute():
            return None
        model = served_text_model(var)
        return None if model == bundled_text_model() else model

    def command(self) -> list[str]:
        repo = self.repository()
        return [
            str(pytriton_dist() / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={prepare_backends(self.workdir)}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-info=true",
        ]

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*die_with_parent(), *self.command()],
            env=server_env(self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        return
                except InferenceServerException:
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise TimeoutError(f"tritonserver not ready after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 15.0) -> None:
        stop_process(self.proc, grace_s)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
