import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tokenizers and token shards are cached by content; tests share one cache per session, never the user's.
os.environ.setdefault("LLMSPEC_CACHE", tempfile.mkdtemp(prefix="llmspec-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
