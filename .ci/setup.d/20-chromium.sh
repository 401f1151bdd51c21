# Headless Chromium for the CORS browser test (crates/mercato/tests/api/cors.rs), which is
# skipped with a notice when no chromium is on PATH. Sourced by .ci/run: idempotent, and never
# fails the run (a failed install only means that test is skipped).
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium: $(chromium --version 2>/dev/null || chromium-browser --version 2>/dev/null)"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/ci-chromium.log 2>&1; then
        echo "chromium installed: $(chromium --version 2>/dev/null || true)"
    else
        echo "chromium could not be installed (see /tmp/ci-chromium.log): the browser test will be skipped"
    fi
else
    echo "no chromium and no apt-get as root: the browser test will be skipped"
fi
