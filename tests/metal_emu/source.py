"""The kernel text, generated exactly as MLX 0.32.4 generates it, and the C++ text compiled from it.

Mirrors `write_signature`, `write_template`, `make_template_hash` and the attribute detection of
mlx/backend/common/metal_kernel.cpp: `source_text` is byte-for-byte what `verbose=True` prints.
`compile_text` is the same text with `#line` markers (so compiler errors and emulator reports name
lines of `source` and `header`), threadgroup declarations turned into shared statics, `1.0h`
literals spelled for g++, and a trampoline that calls the kernel with its thread attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.core as mx

MAX_CONSTANT_ARRAY_SIZE = 8  # inputs with fewer elements are passed in the constant address space

# (name, type) in MLX's order; MLX declares one when its name occurs anywhere in the source.
METAL_ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)

TYPE_STRINGS = {
    mx.float32: "float", mx.float16: "float16_t", mx.bfloat16: "bfloat16_t", mx.float64: "double",
    mx.complex64: "complex64_t", mx.bool_: "bool", mx.int8: "int8_t", mx.int16: "int16_t",
    mx.int32: "int32_t", mx.int64: "int64_t", mx.uint8: "uint8_t", mx.uint16: "uint16_t",
    mx.uint32: "uint32_t", mx.uint64: "uint64_t",
}


def type_string(dtype) -> str:
    try:
        return TYPE_STRINGS[dtype]
    except KeyError:
        raise ValueError(f"Unsupported compilation type {dtype}") from None


@dataclass(frozen=True)
class InputSpec:
    """What the generated text depends on for one input."""
    name: str
    dtype: object
    ndim: int
    size: int

    @property
    def location(self) -> str:
        return "constant" if self.size < MAX_CONSTANT_ARRAY_SIZE else "device"


def shape_infos(source: str, input_names) -> list[tuple[bool, bool, bool]]:
    """Whether `<name>_shape`, `<name>_strides`, `<name>_ndim` occur in the source (MLX's test)."""
    return [(f"{n}_shape" in source, f"{n}_strides" in source, f"{n}_ndim" in source)
            for n in input_names]


def attributes(source: str) -> list[tuple[str, str]]:
    return [(a, t) for a, t in METAL_ATTRIBUTES if a in source]


def template_def(template) -> str:
    parts = []
    for _, arg in template:
        if isinstance(arg, bool):
            parts.append("1" if arg else "0")
        elif isinstance(arg, int):
            parts.append(str(arg))
        else:
            parts.append(type_string(arg))
    return "<" + ", ".join(parts) + ">"


def template_hash(tdef: str) -> str:
    return tdef.replace(", ", "_").replace("<", "_").replace(">", "_")[:-1]


def kernel_name(name: str, template, inputs: list[InputSpec], output_dtypes) -> str:
    kname = "custom_kernel_" + name
    if template:
        kname += "_" + template_hash(template_def(template))
    for spec in inputs:
        kname += "_" + type_string(spec.dtype)
        if spec.ndim == 0:
            kname += "s"
        elif spec.size < MAX_CONSTANT_ARRAY_SIZE:
            kname += "c"
    for dtype in output_dtypes:
        kname += "_" + type_string(dtype)
    return kname


@dataclass(frozen=True)
class Param:
    """One kernel argument: its declaration in the signature and how the trampoline passes it."""
    decl: str          # e.g. "const device float* inp"
    by_ref: bool       # a `T&` parameter (scalar inputs, `_ndim`)
    cast: str          # the pointer type the trampoline casts the buffer to


@dataclass(frozen=True)
class Kernel:
    name: str                      # the user's name
    kname: str                     # MLX's generated kernel name
    header: str
    source: str
    template: tuple
    params: tuple[Param, ...]      # buffers, in buffer-index order
    attrs: tuple[tuple[str, str], ...]
    shape_infos: tuple[tuple[bool, bool, bool], ...]
    n_inputs: int                  # inputs (each may add _shape, _strides, _ndim buffers)
    n_inputs_params: int           # buffers before the first output
    n_outputs: int

    def template_line(self) -> str:
        if not self.template:
            return ""
        kinds = ["bool" if isinstance(a, bool) else "int" if isinstance(a, int) else "typename"
                 for _, a in self.template]
        return "template <" + ", ".join(f"{k} {n}" for k, (n, _) in zip(kinds, self.template)) + ">\n"

    def signature(self) -> str:
        """`[[kernel]] void name(` ... `) {` and a newline, exactly as MLX writes it.

        Mirrors MLX's quirk: an output line ends the parameter list when its buffer index is not
        below len(inputs) + len(outputs) - 1 and there are no attributes, so with `_shape`,
        `_strides` or `_ndim` buffers, several outputs and no thread attribute, the signature
        is broken (on Metal too); see signature_is_broken.
        """
        text = f"[[kernel]] void {self.kname}(\n"
        for i, p in enumerate(self.params):
            text += f"  {p.decl} [[buffer({i})]]"
            if i < self.n_inputs_params:
                text += ",\n"
            elif i < self.n_inputs + self.n_outputs - 1 or self.attrs:
                text += ",\n"
            else:
                text += ") {\n"
        for j, (a, t) in enumerate(self.attrs):
            text += f"  {t} {a} [[{a}]]" + (",\n" if j < len(self.attrs) - 1 else ") {\n")
        return text

    def signature_is_broken(self) -> bool:
        return not self.attrs and self.signature().count(") {\n") > 1

    def instantiation(self) -> str:
        if not self.template:
            return ""
        tdef = self.kname + template_def(self.template)
        return (f'\ntemplate [[host_name("{self.kname}")]] [[kernel]] decltype({tdef}) {tdef};\n')

    def source_text(self) -> str:
        """The generated source, as MLX prints it with verbose=True."""
        return (self.header + self.template_line() + self.signature() + self.source + "\n}\n"
                + self.instantiation())

    def compile_text(self) -> str:
        """What g++ compiles: source_text with line markers and rewrites, plus the trampoline."""
        text = '#line 1 "header"\n' + _rewrite(self.header, "header")
        # MLX appends the signature right after the header: after a header without a final
        # newline the signature continues on the header's last line, so no marker goes there.
        if not self.header or self.header.endswith("\n"):
            text += '#line 1 "signature"\n'
        text += self.template_line() + self.signature()
        text += '#line 1 "source"\n' + _rewrite(self.source, "source") + "\n}\n"
        text += '#line 1 "generated"\n' + self.instantiation() + self.trampoline()
        return text

    def trampoline(self) -> str:
        fn = self.kname + (template_def(self.template) if self.template else "")
        args = []
        for i, p in enumerate(self.params):
            args.append(f"*({p.cast})a[{i}]" if p.by_ref else f"({p.cast})a[{i}]")
        args += [f"emu::attr::{a}()" for a, _ in self.attrs]
        body = ",\n    ".join(args)
        return f'\nextern "C" void emu_entry(void* const* a) {{\n  {fn}(\n    {body});\n}}\n'


def make_kernel(name, header, source, inputs: list[InputSpec], output_names, output_dtypes,
                template, atomic_outputs: bool) -> Kernel:
    infos = shape_infos(source, [s.name for s in inputs])
    params = []
    for spec, (has_shape, has_strides, has_ndim) in zip(inputs, infos):
        t = type_string(spec.dtype)
        ref = spec.ndim == 0
        params.append(Param(f"const {spec.location} {t}{'&' if ref else '*'} {spec.name}", ref,
                            f"const {t}*"))
        if spec.ndim > 0:
            if has_shape:
                params.append(Param(f"const constant int* {spec.name}_shape", False, "const int*"))
            if has_strides:
                params.append(Param(f"const constant int64_t* {spec.name}_strides", False,
                                    "const int64_t*"))
            if has_ndim:
                params.append(Param(f"const constant int& {spec.name}_ndim", True, "const int*"))
    for oname, dtype in zip(output_names, output_dtypes):
        t = type_string(dtype)
        if atomic_outputs:
            t = f"atomic<{t}>"
        params.append(Param(f"device {t}* {oname}", False, f"{t}*"))
    return Kernel(name, kernel_name(name, template, inputs, output_dtypes), header, source,
                  tuple(template), tuple(params), tuple(attributes(source)), tuple(infos),
                  len(inputs), len(params) - len(output_names), len(output_names))


# ---- rewrites for g++ (line-preserving) ----------------------------------------------------

_TG_WORD = re.compile(r"\bthreadgroup\s+")
_HALF_LITERAL = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[hH]\b")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def _declared_names(decl: str) -> list[str]:
    """Names declared by `T a[N], b` (the text after `threadgroup`)."""
    flat = decl
    while True:  # drop array bounds, innermost first: they may hold `<`, `,`, `?:`
        shorter = re.sub(r"\[[^\[\]]*\]", "", flat)
        if shorter == flat:
            break
        flat = shorter
    parts, depth, cur = [], 0, ""
    for ch in flat:
        depth += (ch in "<(") - (ch in ">)")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = []
    for part in parts:
        ident = re.findall(r"[A-Za-z_]\w*", part)
        if not ident:
            raise ValueError(f"cannot parse threadgroup declaration `threadgroup {decl.strip()};`")
        names.append(ident[-1])
    return names


def _blank_comments(text: str) -> str:
    """The text with comments replaced by spaces (newlines kept), so offsets still match."""
    return _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _until_depth0(code: str, pos: int, stops: str) -> int:
    """Index of the first character of `stops` at bracket depth 0 from pos (or len(code))."""
    depth = 0
    for i in range(pos, len(code)):
        ch = code[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in stops:
            return i
    return len(code)


def _declarator_kind(decl: str) -> str:
    """"object" for `T a[N * M]`; "address-space" for `T* p`, `T& r`, `T (&a)[4]`; else "init"."""
    flat = re.sub(r"\[[^\]]*\]", "", decl)
    if re.search(r"[*&()]", flat):
        return "address-space"
    return "init" if "=" in flat else "object"


def _rewrite(text: str, where: str) -> str:
    """Threadgroup declarations become shared statics, poisoned per threadgroup; 1.0h -> half."""
    code = _blank_comments(text)
    out, pos = [], 0
    for m in _TG_WORD.finditer(code):
        before = code[:m.start()].rstrip()
        at_statement = not before or before[-1] in ";{}" or "\n" in code[len(before):m.start()]
        end = _until_depth0(code, m.end(), ";,){")
        decl = code[m.end():end]
        kind = _declarator_kind(decl)
        if kind == "address-space":
            continue  # a pointer or reference: `threadgroup` qualifies what it points to
        if kind == "init" or not at_statement or end == len(code) or code[end] not in ";,":
            line = code[:m.start()].count("\n") + 1
            raise ValueError(f"{where} line {line}: unsupported threadgroup declaration; the "
                             "emulator supports `threadgroup T name[dims];` as one statement, and "
                             "Metal allows no initializer")
        stmt_end = _until_depth0(code, m.end(), ";")
        names = _declared_names(code[m.end():stmt_end])
        calls = " ".join(f"emu::tg_declare({n});" for n in names)
        keyword_end = m.start() + len("threadgroup")
        out.append(text[pos:m.start()] + "static" + text[keyword_end:stmt_end + 1] + " " + calls)
        pos = stmt_end + 1
    out.append(text[pos:])
    return _HALF_LITERAL.sub(_half_literal, "".join(out))


def _half_literal(m) -> str:
    number = m.group(1)
    if not re.search(r"[.eE]", number):
        number += ".0"
    return f"((half){number}f)"
