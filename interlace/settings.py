"""The library's settings: every environment variable `interlace` reads, in one pydantic-settings class.

docs/environment.md is the table of them (and of the operator's, `interlace_operator.config`);
tests/core/test_environment_doc.py keeps the table and these classes equal and fails when a module
reads `os.environ` itself. A field is the variable `INTERLACE_<FIELD>` unless its alias names another
one (third-party conventions: RAY_ADDRESS, HF_*, AWS_*, KUBECONFIG); an empty variable counts as unset.

`settings()` reads the environment at each call (cheap; tests and the CLI change it per run), so
nothing here is frozen at import. A shared leaf: every layer may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from interlace.errors import InterlaceError

TRUE = frozenset({"1", "true", "yes", "on"})


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names) if len(names) > 1 else names[0])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INTERLACE_", env_ignore_empty=True, frozen=True, extra="ignore", populate_by_name=True
    )

    # --- the library's own
    cache: Path = Field(default_factory=lambda: Path.home() / ".cache" / "interlace")
    work_dir: Path | None = None
    pvc_root: Path = Path("/data")
    prunejob: str | None = None
    # The per-job identity's token (files `token`, `ca.crt`), mounted by the operator when the pods run
    # as a shared ServiceAccount: status writes use it instead of the pod's own account.
    status_token_dir: Path | None = None
    status_interval: float | None = Field(default=None, ge=0)
    gpu_wait_seconds: float | None = Field(default=None, ge=0)
    hub_token: SecretStr | None = None
    fault_crash_at_step: int | None = None
    fault_marker: str | None = None
    # --- other tools' conventions
    ray_address: str | None = _alias("RAY_ADDRESS")
    hf_hub_offline: bool = Field(default=False, validation_alias="HF_HUB_OFFLINE")
    hf_datasets_offline: bool = Field(default=False, validation_alias="HF_DATASETS_OFFLINE")
    transformers_offline: bool = Field(default=False, validation_alias="TRANSFORMERS_OFFLINE")
    hf_token: SecretStr | None = _alias("HF_TOKEN")
    hugging_face_hub_token: SecretStr | None = _alias("HUGGING_FACE_HUB_TOKEN")
    huggingface_token: SecretStr | None = _alias("HUGGINGFACE_TOKEN")
    aws_access_key_id: SecretStr | None = _alias("AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = _alias("AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = _alias("AWS_SESSION_TOKEN")
    aws_endpoint_url: str | None = _alias("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    aws_region: str | None = _alias("AWS_REGION", "AWS_DEFAULT_REGION")
    kubeconfig: str | None = _alias("KUBECONFIG")
    kubernetes_service_host: str | None = _alias("KUBERNETES_SERVICE_HOST")

    @field_validator("hf_hub_offline", "hf_datasets_offline", "transformers_offline", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> bool:
        """Hugging Face's own reading of its flags: 1/true/yes/on (any case) is on, anything else off."""
        return str(value).strip().lower() in TRUE

    @field_validator("cache", "work_dir", "pvc_root", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def offline(self) -> bool:
        """No Hub look-ups (any of Hugging Face's three offline flags)."""
        return self.hf_hub_offline or self.hf_datasets_offline or self.transformers_offline

    @property
    def in_cluster(self) -> bool:
        """Use the Pod's ServiceAccount (as client-go does: in a Pod, and no KUBECONFIG given)."""
        return bool(self.kubernetes_service_host) and not self.kubeconfig

    def secret_values(self) -> list[str]:
        """The values of every variable that holds a credential (for redaction)."""
        secrets = (self.aws_secret_access_key, self.aws_access_key_id, self.aws_session_token, self.hf_token,
                   self.hugging_face_hub_token, self.huggingface_token, self.hub_token)
        return [s.get_secret_value() for s in secrets if s is not None]


def settings() -> Settings:
    """The settings from the environment now; a malformed value is an InterlaceError naming the variable."""
    try:
        return Settings()
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = str(e["loc"][0]) if e.get("loc") else "?"
            name = loc if loc.isupper() else f"INTERLACE_{loc.upper()}"
            problems.append(f"{name}={e.get('input')!r}: {str(e['msg']).lower()}")
        raise InterlaceError("; ".join(problems)) from None
