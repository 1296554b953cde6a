# Installs the multitenant agent on a SkyPilot node: the `setup` of every task runs this after
# the coordinator sets MT_AGENT_INSTALL (source | binary | url), MT_AGENT_KEY (names what is
# installed: the source's or binary's SHA-256, or the url's) and the variables of its way.
# Each agent is kept in ~/.multitenant/agents/<key>/, so a later setup on the same machine (the
# task file launched again onto that cluster) finds it there and skips the build or the
# download; each `coordinator run` launches clusters of its own, which build once each.
# ~/.multitenant/bin/agent then points at it; the task's `run` starts that.
mt="$HOME/.multitenant"
installed="$mt/agents/$MT_AGENT_KEY"
mkdir -p "$mt/bin" "$mt/agents"
# A failing step says which, in the launch's output (functions too: errtrace).
set -E
trap 'echo "multitenant: setup: failed: $BASH_COMMAND (line $LINENO of the setup)" >&2' ERR
# One agent install at a time on a machine (a relaunch while another runs): they share these
# folders. The lock is let go before the engine's setup, which may leave things running.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$mt/setup.lock"
  if ! flock -n 9; then
    echo "multitenant: setup: waiting for another setup on this machine to finish"
    flock -w 1800 9 || { echo "multitenant: setup: another setup held $mt/setup.lock for 30 min" >&2; exit 1; }
  fi
fi

# The agent runs here or the setup fails with why (a binary for another platform, a download
# that is not an agent).
agent_runs() {
  if ! out=$("$1" --version 2>&1); then
    echo "multitenant: setup: $2 does not run on this node ($(uname -s) $(uname -m)): $out" >&2
    return 1
  fi
}

# A Rust toolchain at least as new as the workspace's rust-version, installed with rustup
# into ~/.cargo only when none is there.
ensure_cargo() {
  need="$1"
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  have=""
  if version=$(cargo --version 2>/dev/null); then
    have=$(echo "$version" | awk '{print $2}')
    if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" = "$need" ]; then
      echo "multitenant: setup: using cargo $have"
      return 0
    fi
  fi
  echo "multitenant: setup: installing a Rust toolchain with rustup (cargo ${have:-none} is not $need or newer)"
  if ! curl --proto '=https' --tlsv1.2 -sSf -o "$mt/rustup-init.sh" https://sh.rustup.rs; then
    echo "multitenant: setup: the agent build failed: cannot download rustup from https://sh.rustup.rs" >&2
    exit 1
  fi
  sh "$mt/rustup-init.sh" -y --profile minimal --no-modify-path --default-toolchain stable >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
}

# A C compiler (the TLS library builds C), from the distribution's packages when missing.
ensure_cc() {
  command -v cc >/dev/null 2>&1 && return 0
  echo "multitenant: setup: installing a C compiler (build-essential)"
  sudo_if_needed=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo_if_needed apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get -o DPkg::Lock::Timeout=300 install -y -qq build-essential pkg-config >/dev/null
}

# An agent downloaded without a SHA-256 to check is fetched again every time.
reusable=1
[ "$MT_AGENT_INSTALL" = url ] && [ -z "${MT_AGENT_SHA256:-}" ] && reusable=0
if [ "$reusable" = 1 ] && [ -x "$installed/agent" ] && agent_runs "$installed/agent" "the kept agent $MT_AGENT_KEY" 2>/dev/null; then
  echo "multitenant: setup: agent $MT_AGENT_KEY is installed already (kept from an earlier launch)"
else
  case "$MT_AGENT_INSTALL" in
    source)
      echo "multitenant: setup: building the agent from source $MT_AGENT_KEY (once per cluster; a few minutes)"
      ensure_cargo "$MT_RUST_VERSION"
      ensure_cc
      build="$mt/build/$MT_AGENT_KEY"
      log="$mt/build/$MT_AGENT_KEY.log"
      rm -rf "$build"
      mkdir -p "$build"
      tar -xzf "$MT_SOURCE_ARCHIVE" -C "$build"
      target="${CARGO_TARGET_DIR:-$build/target}"
      if ! (cd "$build" && cargo build --release --locked -p agent --target-dir "$target") >"$log" 2>&1; then
        echo "multitenant: setup: the agent build failed; the last 40 lines of $log on the node:" >&2
        tail -n 40 "$log" >&2
        exit 1
      fi
      mkdir -p "$installed"
      cp "$target/release/agent" "$installed/agent.tmp"
      rm -rf "$build"
      ;;
    binary)
      echo "multitenant: setup: installing the agent binary uploaded from the coordinator's machine"
      mkdir -p "$installed"
      # The upload is ours and is replaced, not rewritten, by a later sync: a link will do.
      ln -f "$MT_UPLOADED_AGENT" "$installed/agent.tmp" 2>/dev/null || cp "$MT_UPLOADED_AGENT" "$installed/agent.tmp"
      ;;
    url)
      echo "multitenant: setup: downloading the agent from $MT_AGENT_URL"
      mkdir -p "$installed"
      curl --proto '=https' --proto-redir '=https' --tlsv1.2 -fsSL --retry 3 -o "$installed/agent.tmp" "$MT_AGENT_URL"
      if [ -z "${MT_AGENT_SHA256:-}" ]; then
        echo "multitenant: setup: warning: no agent_sha256 in the config, so nothing checks what $MT_AGENT_URL served"
      else
        got=$(sha256sum "$installed/agent.tmp" | awk '{print $1}')
        if [ "$got" != "$MT_AGENT_SHA256" ]; then
          echo "multitenant: setup: $MT_AGENT_URL has SHA-256 $got, not the agent_sha256 $MT_AGENT_SHA256 of the config" >&2
          rm -f "$installed/agent.tmp"
          exit 1
        fi
      fi
      ;;
    *)
      echo "multitenant: setup: unknown MT_AGENT_INSTALL '$MT_AGENT_INSTALL'" >&2
      exit 1
      ;;
  esac
  chmod +x "$installed/agent.tmp"
  agent_runs "$installed/agent.tmp" "the agent ($MT_AGENT_INSTALL)" || { rm -f "$installed/agent.tmp"; exit 1; }
  mv "$installed/agent.tmp" "$installed/agent"
fi
ln -sfn "$installed/agent" "$mt/bin/agent"
echo "multitenant: setup: agent ready: $("$mt/bin/agent" --version)"
exec 9>&-
trap - ERR
