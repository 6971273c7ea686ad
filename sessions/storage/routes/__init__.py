"""One APIRouter per resource of the storage internal API (`/internal/v1`)."""
