"""Wraps Debian's -dev packages as Bazel targets through pkg-config.

Nothing is downloaded: the repository rule only runs pkg-config on the host and
writes a BUILD file whose cc_library targets carry the linker flags it printed.
Headers come from /usr/include, which the host toolchain already searches.
"""

def _pkg_config(ctx, args):
    res = ctx.execute(["pkg-config"] + args)
    if res.return_code != 0:
        fail("pkg-config %s failed (run ./tools/setup.sh to install the Debian packages): %s" %
             (" ".join(args), res.stderr))
    return res.stdout.strip()

def _dedupe_keep_last(flags):
    # pkg-config repeats static-order -l flags; keep the last occurrence so that
    # dependants still come before their dependencies.
    seen = {}
    out = []
    for f in reversed(flags):
        if f in seen:
            continue
        seen[f] = True
        out.append(f)
    return reversed(out)

# Linked from the C/C++ runtime as shared objects even in a "static" target.
_TOOLCHAIN_LIBS = ["m", "pthread", "rt", "dl", "z", "atomic", "stdc++", "gcc_s", "c"]

def _system_libs_impl(ctx):
    lines = ['package(default_visibility = ["//visibility:public"])', ""]
    for name, modules in ctx.attr.libs.items():
        mods = modules.split(" ")
        libs = _pkg_config(ctx, ["--libs"] + mods).split(" ")
        cflags = _pkg_config(ctx, ["--cflags"] + mods).split(" ")
        libs = [l for l in _dedupe_keep_last([l for l in libs if l])]
        defines = [c[2:] for c in cflags if c.startswith("-D")]
        lines.append("cc_library(")
        lines.append('    name = "%s",' % name)
        lines.append("    linkopts = %s," % repr(libs))
        lines.append("    defines = %s," % repr(defines))
        lines.append(")")
        lines.append("")
    for name, modules in ctx.attr.static.items():
        # The same libraries linked from their .a archives. Placed first on
        # the link line (a binary lists this target before anything else), the
        # archives resolve every symbol; the shared -l flags that other
        # targets carry then come after --as-needed and are dropped, so the
        # binary starts without loading dozens of shared objects.
        mods = modules.split(" ")
        libs = _pkg_config(ctx, ["--static", "--libs-only-l"] + mods).split(" ")
        libs = [l for l in _dedupe_keep_last([l for l in libs if l])]
        archived = [l for l in libs if l[2:] not in _TOOLCHAIN_LIBS]
        shared = [l for l in libs if l[2:] in _TOOLCHAIN_LIBS]
        lines.append("cc_library(")
        lines.append('    name = "%s",' % name)
        lines.append("    linkopts = %s," % repr(
            # libstdc++ too: the toolchain appends a shared -lstdc++ later.
            ["-Wl,--as-needed", "-Wl,-Bstatic"] + archived + ["-lstdc++", "-Wl,-Bdynamic"] + shared,
        ))
        lines.append(")")
        lines.append("")
    for name, flags in ctx.attr.raw.items():
        lines.append("cc_library(")
        lines.append('    name = "%s",' % name)
        lines.append("    linkopts = %s," % repr(flags.split(" ")))
        lines.append(")")
        lines.append("")
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", "\n".join(lines))

system_libs = repository_rule(
    implementation = _system_libs_impl,
    attrs = {
        "libs": attr.string_dict(doc = "target name -> space-separated pkg-config modules"),
        "static": attr.string_dict(doc = "target name -> pkg-config modules linked from their .a archives"),
        "raw": attr.string_dict(doc = "target name -> raw linker flags (libraries without a .pc file)"),
    },
    local = True,
)
