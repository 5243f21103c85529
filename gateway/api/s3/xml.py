"""S3 XML documents: building responses and parsing the few request bodies.

Request bodies are parsed with the standard library's expat parser, which
(expat >= 2.4) refuses entity-expansion bombs; bodies are size-limited before
they get here, and DTDs are refused outright (by the parser, in any encoding).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import quote
from xml.sax.saxutils import escape

from ... import errors

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def element(tag: str, value) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


def document(root: str, *parts: str, namespace: bool = True) -> bytes:
    ns = f' xmlns="{NS}"' if namespace else ""
    return DECLARATION + f"<{root}{ns}>{''.join(parts)}</{root}>".encode()


def keep_key(key: str) -> str:
    return key


def url_encode_key(key: str) -> str:
    return quote(key, safe="/")


def listing_encoder(query: dict[str, str]):
    """How a listing writes keys, prefixes, markers and delimiters: as they are, or percent-encoded
    for encoding-type=url (what a client asks for to get keys with characters XML cannot carry)."""
    encoding = query.get("encoding-type")
    if encoding is None:
        return keep_key
    if encoding != "url":
        raise errors.InvalidArgument("encoding-type must be url.", ArgumentName="encoding-type",
                                     ArgumentValue=encoding)
    return url_encode_key


# Characters XML 1.0 cannot carry at all, not even as character references.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def not_xml(text: str) -> bool:
    """Whether ``text`` holds a character XML 1.0 cannot carry."""
    return _NOT_XML.search(text) is not None


def xml_safe(value) -> str:
    """``value`` with the characters XML 1.0 forbids percent-encoded (%01): for error details and the
    key a multipart answer repeats (the client knows it; an SDK that cannot parse the answer retries
    and leaves an upload behind per try).

    Listings keep keys exactly (clients ask for encoding-type=url to get such keys safely, as on
    S3); an error body must stay parseable, or the client loses the error code.
    """
    text = str(value)
    return _NOT_XML.sub(lambda m: f"%{ord(m.group()):02X}" if m.group() < "\x80" else "\ufffd", text)


def error_document(exc: errors.GatewayError, resource: str, request_id: str, host_id: str = "") -> bytes:
    """S3's error document. ``host_id``: the node that answered (S3's HostId), so that an operator
    of a cluster knows whose log holds ``request_id``."""
    fields = "".join(element(name, xml_safe(value)) for name, value in exc.fields.items())
    return DECLARATION + (
        f"<Error>{element('Code', exc.code)}{element('Message', xml_safe(exc.message))}{fields}"
        f"{element('Resource', resource)}{element('RequestId', request_id)}"
        f"{element('HostId', xml_safe(host_id))}</Error>"
    ).encode()


class _NoDoctypeBuilder(ET.TreeBuilder):
    """A tree builder that stops the parse at a document type declaration, before expat reads its
    entities. Looking for b"<!DOCTYPE" in the bytes is not enough: expat also reads UTF-16 (told
    by a byte-order mark or by the first bytes alone), where the declaration is other bytes, and
    its entities were then expanded (a billion laughs up to expat's amplification limit)."""

    def doctype(self, name, pubid, system):
        raise errors.MalformedXML("Document type declarations are not allowed.")


def parse(body: bytes) -> ET.Element:
    """Parse a request document; strip the S3 namespace from tags. Raise MalformedXML."""
    try:
        parser = ET.XMLParser(target=_NoDoctypeBuilder())
        parser.feed(body)
        root = parser.close()
    except ET.ParseError as exc:
        raise errors.MalformedXML(f"The XML you provided was not well-formed: {exc}") from None
    except (LookupError, ValueError, UnicodeError) as exc:
        # The declaration names an encoding Python does not know, or one expat cannot read
        # (multi-byte ones such as shift_jis or utf-32), or a codec that is not a text encoding.
        raise errors.MalformedXML(f"The XML you provided declares an encoding that cannot be read: {exc}") from None
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    return root


def child_text(node: ET.Element, tag: str, required: bool = True) -> str | None:
    found = node.find(tag)
    if found is None:
        if required:
            raise errors.MalformedXML(f"<{node.tag}> is missing <{tag}>.")
        return None
    return found.text or ""
