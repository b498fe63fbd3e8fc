"""schemathesis hooks for the e2e run (loaded through SCHEMATHESIS_HOOKS=schemathesis_hooks).

tus chunks (`PATCH /tus/{upload_id}`, `POST /tus/` with data) are `application/offset+octet-stream`: raw bytes,
sent like `application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
