"""One APIRouter per public resource."""
