"""C++ protobuf / gRPC code generation with Debian's protoc and grpc_cpp_plugin.

`cc_proto(name, src, grpc)` runs protoc in a genrule (no rules_proto toolchain,
no download) and wraps the generated sources in a cc_library.
"""

def cc_proto(name, src, deps = [], grpc = False, visibility = None):
    base = src[:-len(".proto")]
    outs = [base + ".pb.h", base + ".pb.cc"]
    if grpc:
        outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    pkg = native.package_name()
    cmd = "protoc -I. -I$(GENDIR) --cpp_out=$(GENDIR) "
    if grpc:
        cmd += "--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) "
    cmd += (pkg + "/" if pkg else "") + src
    native.genrule(
        name = name + "_gen",
        srcs = [src] + [d + "_srcs" for d in deps],
        outs = outs,
        cmd = cmd,
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = [src] + [d + "_srcs" for d in deps],
        visibility = visibility,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system//:grpcpp" if grpc else "@system//:protobuf"],
        copts = ["-Wno-unused-parameter", "-Wno-array-bounds", "-Wno-deprecated-declarations"],
        visibility = visibility,
    )
