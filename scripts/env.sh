# Sourced by the other scripts: points the course at the offline data in ../shared when it exists.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d "$_root/../shared/tiktoken_cache" ]; then
  export TIKTOKEN_CACHE_DIR="$(cd "$_root/../shared/tiktoken_cache" && pwd)"
fi
if [ -z "${NANOGPT_COURSE_DATA:-}" ] && [ -d "$_root/../shared/data" ]; then
  export NANOGPT_COURSE_DATA="$(cd "$_root/../shared/data" && pwd)"
fi
export PYTHONUNBUFFERED=1
