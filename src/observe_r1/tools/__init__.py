"""Tools a policy calls during multi-turn rollouts (docs/tools.md): the protocol, the built-ins, the sandbox."""
