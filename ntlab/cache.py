"""The run cache's upkeep and reading helpers, under their old import path.

Everything lives in `ntlab.core.cache` (keys, entries, claims, storing and `ntlab cache`'s
upkeep); this module re-exports what other code and older scripts import from here."""

from ntlab.core.cache import (  # noqa: F401  (re-exported)
    BROKEN,
    CODE_PARTS,
    ENTRY_FILES,
    LEFTOVER_AGE_S,
    RETRAIN,
    TEMP_NAME,
    CacheScan,
    Item,
    check_entry,
    code_digest,
    entry_model,
    entry_results,
    human_size,
    remove,
    scan,
    set_aside,
    source_digest,
    to_clear,
    warn,
)
from ntlab.storage import read_json_object  # noqa: F401  (re-exported)
