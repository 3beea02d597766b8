//! Which IP addresses count as private (SPEC §4): loopback, RFC 1918, CGNAT, link-local, ULA, mapped forms.
