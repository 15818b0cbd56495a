"""What the image holds, as an SPDX 2.3 document: the tree's own package databases, read without their tools

One SPDX package per installed binary package (dpkg's status file, rpm's
rpmdb.sqlite) with its version, architecture, supplier, source package, a
package URL and the license the package declares (rpm's License tag, or
the `License:` fields of a machine-readable `usr/share/doc/PKG/copyright`)
as an SPDX expression: names the SPDX list knows become its identifiers,
anything else a `LicenseRef-` with the name it had. One package for the
image itself, named by its config digest (the image ID). The same tree
gives the same bytes: no clock, no random identifiers, everything sorted.
"""

import json
import os
import re
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from .owners import RPMDB_PATHS, PathCanon, dpkg_owners, read_rpmdb, rpm_header, rpm_owners

SPDX_VERSION = "SPDX-2.3"
NAMESPACE = "https://osbuild.org/spdxdocs/"
CREATOR = "Tool: osbuild-org.osbuild.oci-archive"
NOASSERTION = "NOASSERTION"

RPMTAG_VERSION, RPMTAG_RELEASE, RPMTAG_EPOCH = 1001, 1002, 1003
RPMTAG_VENDOR, RPMTAG_LICENSE, RPMTAG_PACKAGER, RPMTAG_URL, RPMTAG_ARCH = 1011, 1014, 1015, 1020, 1022
RPMTAG_NAME, RPMTAG_SOURCERPM = 1000, 1044
RPM_WANTED = (RPMTAG_NAME, RPMTAG_VERSION, RPMTAG_RELEASE, RPMTAG_EPOCH, RPMTAG_VENDOR, RPMTAG_LICENSE,
              RPMTAG_PACKAGER, RPMTAG_URL, RPMTAG_ARCH, RPMTAG_SOURCERPM)

# SPDX license list identifiers and exceptions that packages commonly name
# (a name outside these becomes a LicenseRef: always a valid expression)
SPDX_LICENSES = {name.lower(): name for name in """
0BSD AFL-2.1 AFL-3.0 AGPL-3.0-only AGPL-3.0-or-later Apache-1.0 Apache-1.1 Apache-2.0 APSL-2.0 Artistic-1.0
Artistic-1.0-Perl Artistic-2.0 Beerware BSD-1-Clause BSD-2-Clause BSD-2-Clause-Patent BSD-3-Clause
BSD-4-Clause BSD-Source-Code BSL-1.0 bzip2-1.0.6 CC-BY-3.0 CC-BY-4.0 CC-BY-SA-3.0 CC-BY-SA-4.0 CC-PDDC CC0-1.0
CDDL-1.0 CDDL-1.1 CECILL-2.1 curl EPL-1.0 EPL-2.0 EUPL-1.2 FSFAP FSFUL FSFULLR FTL GFDL-1.1-only
GFDL-1.1-or-later GFDL-1.2-only GFDL-1.2-or-later GFDL-1.3-only GFDL-1.3-or-later GPL-1.0-only
GPL-1.0-or-later GPL-2.0-only GPL-2.0-or-later GPL-3.0-only GPL-3.0-or-later HPND ICU IJG ISC LGPL-2.0-only
LGPL-2.0-or-later LGPL-2.1-only LGPL-2.1-or-later LGPL-3.0-only LGPL-3.0-or-later Libpng libtiff LPPL-1.3c
MIT MIT-0 MPL-1.0 MPL-1.1 MPL-2.0 MS-PL NCSA NTP OFL-1.1 OLDAP-2.8 OpenSSL PHP-3.01 PostgreSQL PSF-2.0
Python-2.0 Ruby SGI-B-2.0 SISSL Sleepycat SSPL-1.0 TCL Unicode-DFS-2016 Unicode-3.0 Unlicense UPL-1.0 Vim W3C
WTFPL X11 Zlib zlib-acknowledgement ZPL-2.1
""".split()}
SPDX_EXCEPTIONS = {name.lower(): name for name in """
Autoconf-exception-2.0 Autoconf-exception-3.0 Bison-exception-2.2 Classpath-exception-2.0 GCC-exception-2.0
GCC-exception-3.1 LLVM-exception OpenSSL-exception Libtool-exception Font-exception-2.0 Linux-syscall-note
""".split()}
# names Debian's copyright files and older rpm License tags use for list licenses
ALIASES = {"expat": "MIT", "bsd-2": "BSD-2-Clause", "bsd-3": "BSD-3-Clause", "bsd-4": "BSD-4-Clause",
           "artistic": "Artistic-1.0-Perl", "psf-2": "PSF-2.0", "cc0": "CC0-1.0", "zlib/libpng": "Zlib",
           "boost": "BSL-1.0", "mpl": "MPL-1.1", "python": "Python-2.0", "apache-2": "Apache-2.0",
           "asl 2.0": "Apache-2.0", "perl": "Artistic-1.0-Perl"}
GNU_LICENSE = re.compile(r"^(a|l)?gpl-?v?(\d)(?:\.(\d))?(\+|-or-later|-only)?$", re.IGNORECASE)
GFDL_LICENSE = re.compile(r"^gfdl-?v?1\.(\d)(\+|-or-later|-only)?$", re.IGNORECASE)
TOKEN = re.compile(r"\(|\)|,|[^\s(),]+")


def license_id(name: str) -> Optional[str]:
    """The SPDX identifier of a license name (GPL-2+, GPLv3, Expat, MIT, ...); None if it has none"""
    key = name.strip().lower()
    if key in SPDX_LICENSES:
        return SPDX_LICENSES[key]
    if key in ALIASES:
        return ALIASES[key]
    gnu = GNU_LICENSE.match(key)
    if gnu:
        prefix, major, minor, later = gnu.groups()
        kind = f"{(prefix or '').upper()}GPL"
        minor = minor or "0"
        candidate = f"{kind}-{major}.{minor}-{'or-later' if later in ('+', '-or-later') else 'only'}"
        return candidate if candidate.lower() in SPDX_LICENSES else None
    gfdl = GFDL_LICENSE.match(key)
    if gfdl:
        minor, later = gfdl.groups()
        candidate = f"GFDL-1.{minor}-{'or-later' if later in ('+', '-or-later') else 'only'}"
        return candidate if candidate.lower() in SPDX_LICENSES else None
    return None


def license_ref(text: str) -> str:
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unnamed")


def spdx_expression(text: str, refs: Dict[str, str]) -> str:
    """`text` (a Debian short name or expression, an rpm License tag) as a valid SPDX expression;
    `refs` gets each LicenseRef made and the name it stands for"""
    out: List[str] = []
    expect_operand, depth = True, 0
    tokens = [t for t in TOKEN.findall(text) if t != ","]
    i = 0
    while i < len(tokens):
        token, word = tokens[i], tokens[i].lower()
        if token == "(" and expect_operand:
            depth += 1
            out.append("(")
        elif token == ")" and not expect_operand and depth:
            depth -= 1
            out.append(")")
        elif word in ("and", "or") and not expect_operand:
            out.append(word.upper())
            expect_operand = True
        elif word == "with" and not expect_operand and i + 1 < len(tokens):
            exception = SPDX_EXCEPTIONS.get(tokens[i + 1].lower())
            if exception is None:  # an exception the list lacks: the licence and it become one reference
                named = f"{out.pop()} with {tokens[i + 1]}"
                out.append(license_ref(named))
                refs[out[-1]] = named
            else:
                out += ["WITH", exception]
            i += 1
        elif expect_operand and token not in ("(", ")"):
            known = license_id(token)
            if known is None:
                known = license_ref(token)
                refs[known] = token
            out.append(known)
            expect_operand = False
        else:  # not an expression: the whole text names one licence
            whole = license_ref(text)
            refs[whole] = text.strip()
            return whole
        i += 1
    if expect_operand or depth:
        if not text.strip():
            return NOASSERTION
        whole = license_ref(text)
        refs[whole] = text.strip()
        return whole
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def paragraphs(text: str) -> List[Dict[str, str]]:
    """RFC 822-style paragraphs (dpkg status, Debian copyright): field -> value, continuation lines kept"""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: Dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def debian_copyright(root: str, package: str, refs: Dict[str, str]) -> str:
    """The licence a machine-readable usr/share/doc/PACKAGE/copyright declares; NOASSERTION without one"""
    path = os.path.join(root, "usr", "share", "doc", package, "copyright")
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return NOASSERTION
        with open(path, "rb") as f:
            text = f.read(1024 * 1024).decode("utf-8", "replace")
    except OSError:
        return NOASSERTION
    found = paragraphs(text)
    if not found or not ("format" in found[0] or "format-specification" in found[0]):
        return NOASSERTION
    names = set()
    for fields in found:
        if "license" in fields and ("files" in fields or fields is found[0]):
            name = fields["license"].split("\n", 1)[0].strip()
            if name:
                names.add(spdx_expression(name, refs))
    names.discard(NOASSERTION)
    if not names:
        return NOASSERTION
    parts = sorted(f"({n})" if " " in n and len(names) > 1 else n for n in names)
    return " AND ".join(parts)


def os_release(root: str) -> Dict[str, str]:
    for relative in ("etc/os-release", "usr/lib/os-release"):
        path = os.path.join(root, relative)
        if os.path.islink(path):
            target = os.readlink(path)
            path = os.path.join(root, target.lstrip("/")) if target.startswith("/") else \
                os.path.join(os.path.dirname(path), target)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        out = {}
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip():
                out[key.strip()] = value.strip().strip("\"'")
        return out
    return {}


def purl(kind: str, namespace: str, name: str, version: str, qualifiers: Dict[str, str]) -> str:
    """A package URL: pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS (sorted, empty ones left out)"""
    quote = urllib.parse.quote
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in sorted(qualifiers.items()) if v)
    where = f"{quote(namespace, safe='')}/" if namespace else ""
    return f"pkg:{kind}/{where}{quote(name, safe='')}@{quote(version, safe='')}" + (f"?{query}" if query else "")


def party(value: str) -> str:
    """`Name <mail>` as an SPDX supplier or originator"""
    value = " ".join(value.split())
    match = re.match(r"^(.*?)\s*<([^>]*)>\s*$", value)
    return f"Organization: {match.group(1)} ({match.group(2)})" if match else f"Organization: {value}"


def dpkg_packages(root: str, distro: Dict[str, str], refs: Dict[str, str]) -> List[Dict[str, Any]]:
    """The installed packages of dpkg's status file, as SPDX packages (without SPDXID)"""
    try:
        with open(os.path.join(root, "var", "lib", "dpkg", "status"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for fields in paragraphs(text):
        name, version = fields.get("package"), fields.get("version")
        if not name or not version or fields.get("status", "").split()[-1:] != ["installed"]:
            continue
        arch = fields.get("architecture", "")
        source, _, source_version = fields.get("source", name).partition(" ")
        source_version = source_version.strip("() ") or version
        package: Dict[str, Any] = {
            "name": name,
            "versionInfo": version,
            "sourceInfo": f"built package from: {source} {source_version}",
            "licenseDeclared": debian_copyright(root, name, refs),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl("deb", distro.get("ID", "debian"), name, version, {
                                  "arch": arch, "distro": distro_qualifier(distro),
                                  "upstream": source if source != name else ""})}],
        }
        if fields.get("maintainer"):
            package["supplier"] = party(fields["maintainer"])
        if fields.get("homepage"):
            package["homepage"] = fields["homepage"]
        out.append(("deb", name, arch, version, package))
    return [p for *_, p in sorted(out, key=lambda item: item[:4])]


def distro_qualifier(distro: Dict[str, str]) -> str:
    return f"{distro['ID']}-{distro['VERSION_ID']}" if distro.get("ID") and distro.get("VERSION_ID") else \
        distro.get("ID", "")


def rpm_text(tags: Dict[int, Any], tag: int) -> str:
    value = tags.get(tag)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def rpm_packages(root: str, distro: Dict[str, str], refs: Dict[str, str]) -> List[Dict[str, Any]]:
    """The packages of the tree's rpmdb.sqlite, as SPDX packages (without SPDXID)"""
    for relative in RPMDB_PATHS:
        path = os.path.join(os.fsencode(root), relative)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        out = []
        for blob in read_rpmdb(path):
            try:
                tags = rpm_header(blob, RPM_WANTED)
            except (ValueError, IndexError):
                continue

            text = {tag: rpm_text(tags, tag) for tag in RPM_WANTED}
            name, version, release, arch = text[RPMTAG_NAME], text[RPMTAG_VERSION], text[RPMTAG_RELEASE], \
                text[RPMTAG_ARCH]
            if not name or name == "gpg-pubkey":
                continue
            epoch = tags.get(RPMTAG_EPOCH, [None])[0]
            full = f"{epoch}:{version}-{release}" if epoch else f"{version}-{release}"
            source = text[RPMTAG_SOURCERPM]
            package: Dict[str, Any] = {
                "name": name,
                "versionInfo": full,
                "licenseDeclared": spdx_expression(text[RPMTAG_LICENSE], refs) if text[RPMTAG_LICENSE]
                else NOASSERTION,
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                  "referenceLocator": purl("rpm", distro.get("ID", ""), name, f"{version}-{release}",
                                                           {"arch": arch, "epoch": str(epoch) if epoch else "",
                                                            "distro": distro_qualifier(distro)})}],
            }
            if source:
                package["sourceInfo"] = f"built package from: {source}"
            if text[RPMTAG_VENDOR]:
                package["supplier"] = party(text[RPMTAG_VENDOR])
            if text[RPMTAG_PACKAGER]:
                package["originator"] = party(text[RPMTAG_PACKAGER])
            if text[RPMTAG_URL]:
                package["homepage"] = text[RPMTAG_URL]
            out.append(("rpm", name, arch, full, package))
        return [p for *_, p in sorted(out, key=lambda item: item[:4])]
    return []


def owned_paths(root: str) -> set:
    """The tree paths (b"usr/bin/ls") that the tree's package databases list"""
    base = os.fsencode(os.path.abspath(root))
    canon = PathCanon(base)

    def quiet(*_: Any, **__: Any) -> None:
        pass  # the layer plan says what it finds in the databases; the SBOM counts only

    owned = set(rpm_owners(base, canon, quiet))
    owned.update(dpkg_owners(base, canon, quiet))
    return owned


def unpackaged_files(root: str, owned: set) -> int:
    """Files (not directories) of the tree that no package lists"""
    count = 0
    stack = [b""]
    base = os.fsencode(root)
    while stack:
        relative = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(base, relative) if relative else base))
        except OSError:
            continue
        for entry in entries:
            path = relative + b"/" + entry.name if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif path not in owned:
                count += 1
    return count


def spdx_id(kind: str, name: str, taken: set) -> str:
    base = f"SPDXRef-Package-{kind}-" + (re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "unnamed")
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def document(root: str, image_name: str, config_digest: str, created: str, log=print) -> Tuple[bytes, int]:
    """The SPDX 2.3 JSON document of the image of tree `root` (canonical bytes) and its number of packages"""
    distro = os_release(root)
    refs: Dict[str, str] = {}
    packages = [("deb", p) for p in dpkg_packages(root, distro, refs)] + \
        [("rpm", p) for p in rpm_packages(root, distro, refs)]
    if not packages:
        log("oci-archive: sbom: no dpkg or rpm database in the tree: the document names the image only")
    hexdigest = config_digest.split(":", 1)[1]
    image = {
        "SPDXID": "SPDXRef-Image",
        "name": image_name,
        "versionInfo": config_digest,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": hexdigest}],
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
    }
    taken = {"SPDXRef-DOCUMENT", "SPDXRef-Image"}
    spdx_packages = [image]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-Image"}]
    for kind, package in packages:
        package.update({"SPDXID": spdx_id(kind, package["name"], taken), "downloadLocation": NOASSERTION,
                        "filesAnalyzed": False, "licenseConcluded": NOASSERTION, "copyrightText": NOASSERTION})
        package.setdefault("supplier", NOASSERTION)
        spdx_packages.append(package)
        relationships.append({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS",
                              "relatedSpdxElement": package["SPDXID"]})
    unowned = unpackaged_files(root, owned_paths(root))
    doc: Dict[str, Any] = {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": f"{NAMESPACE}{re.sub(r'[^A-Za-z0-9.-]+', '-', image_name)}-{hexdigest}",
        "comment": f"{unowned} files of the image belong to no package (not listed)",
        "creationInfo": {"created": created, "creators": [CREATOR]},
        "packages": spdx_packages,
        "relationships": relationships,
    }
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "name": name, "extractedText": f"The licence named {name!r} by the package"}
            for ref, name in sorted(refs.items())]
    data = json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    return data, len(packages)
