#!/usr/bin/env bash
# Download, verify and unpack the Free Music Archive (FMA) dataset.
#
#   ./download_data.sh [small|medium|large|full] [DATA_DIR]        (defaults: small data)
#
# Fetches fma_metadata.zip and fma_<subset>.zip, checks their SHA1 against the official table and
# unpacks them to DATA_DIR/fma_metadata/ and DATA_DIR/fma_<subset>/<tid[:3]>/<tid>.mp3.
# Safe to interrupt and rerun: downloads resume from DATA_DIR/<archive>.part, a verified archive is
# not fetched again, and a folder counts as unpacked only once it holds a .complete marker.
#
# Environment:
#   FMA_BASE_URL   download server (default https://os.unil.cloud.switch.ch/fma)
#   FMA_CHECKSUMS  a `sha1sum`-format file that replaces the built-in SHA1 table (mirrors, tests)
#   FMA_COMPLETE   1: fill in the clips missing from an existing (partial) fma_<subset>/ from the verified
#                  archive, keeping every file already there (main.py does this for a partial download)
set -euo pipefail

BASE_URL="${FMA_BASE_URL:-https://os.unil.cloud.switch.ch/fma}"
BASE_URL="${BASE_URL%/}"
SUBSET="${1:-small}"
DATA_DIR="${2:-data}"
MARKER=".complete"

usage() {
    echo "usage: $0 [small|medium|large|full] [DATA_DIR]   (defaults: small data)" >&2
    exit "${1:-2}"
}

die() {  # one paragraph on stderr, then a non-zero exit
    echo >&2
    echo "error: $*" >&2
    exit 1
}

# Official SHA1 of each archive (from the FMA repository; docs/data.md: FMA's files).
# A case statement rather than an associative array keeps macOS's bash 3.2 working.
builtin_sha1() {
    case "$1" in
        fma_metadata.zip) echo f0df49ffe5f2a6008d7dc83c6915b31835dfe733 ;;
        fma_small.zip)    echo ade154f733639d52e35e32f5593efe5be76c6d70 ;;
        fma_medium.zip)   echo c67b69ea232021025fca9231fc1c7c1a063ab50b ;;
        fma_large.zip)    echo 497109f4dd721066b5ce5e5f250ec604dc78939e ;;
        fma_full.zip)     echo 0f0ace23fbe9ba30ecb7e95f763e435ea802b8ab ;;
    esac
}

archive_size() {
    case "$1" in
        fma_metadata.zip) echo "342 MiB" ;;
        fma_small.zip)    echo "7.2 GiB" ;;
        fma_medium.zip)   echo "22 GiB" ;;
        fma_large.zip)    echo "93 GiB" ;;
        fma_full.zip)     echo "879 GiB" ;;
    esac
}

expected_sha1() {
    local archive="$1" sum name
    if [ -z "${FMA_CHECKSUMS:-}" ]; then
        builtin_sha1 "$archive"
        return
    fi
    [ -f "$FMA_CHECKSUMS" ] || die "FMA_CHECKSUMS names $FMA_CHECKSUMS, which does not exist. Point it \
at a sha1sum-format file (lines '<sha1>  <archive>') or unset it to use the official checksums."
    # sha1sum lines are '<sha1>  <name>' or '<sha1> *<name>'; the name may carry a directory. Files
    # written on Windows may end lines in CRLF, lack the final newline or spell the SHA1 in capitals.
    while read -r sum name || [ -n "$sum" ]; do
        name="${name%$'\r'}"
        name="${name#\*}"
        if [ "${name##*/}" = "$archive" ]; then
            echo "$sum" | tr 'A-F' 'a-f'
            return
        fi
    done < "$FMA_CHECKSUMS"
    die "$FMA_CHECKSUMS (FMA_CHECKSUMS) has no line for $archive. Add '<sha1>  $archive' to it or \
unset FMA_CHECKSUMS to use the official checksums."
}

# SHA1 of DATA_DIR/$1, read from stdin: given a path with a backslash in it, sha1sum would mark
# its output line with a leading backslash.
sha1_of() {
    echo "$1: verifying SHA1 (a minute or more for the large archives) ..." >&2
    if command -v sha1sum > /dev/null; then
        sha1sum < "$DATA_DIR/$1" | cut -d ' ' -f 1
    else  # macOS ships shasum instead of coreutils' sha1sum
        shasum -a 1 < "$DATA_DIR/$1" | cut -d ' ' -f 1
    fi
}

# Without curl and wget, say so (and how to get one) rather than let bash's "command not found"
# pass for a network failure.
require_downloader() {
    local url="$1"
    command -v curl > /dev/null || command -v wget > /dev/null || die "neither curl nor wget is \
installed, and one of them is needed to download $url. Install either, e.g. curl: sudo apt-get \
install curl (Debian, Ubuntu), sudo dnf install curl (Fedora), brew install curl (macOS) or conda \
install -c conda-forge curl (a conda environment); then rerun this script. Or download $url \
yourself (browser, another machine), put it in $DATA_DIR/ and rerun: it is verified and unpacked \
from there."
}

# Download $url into $part, continuing whatever $part already holds.
fetch() {
    local url="$1" part="$2" rc=0
    if command -v curl > /dev/null; then
        local progress=(-sS)
        [ -t 2 ] && progress=(--progress-bar)
        local status
        status="$(curl -fL "${progress[@]}" --connect-timeout 30 --retry 3 -C - -o "$part" \
            -w '%{http_code}' "$url")" || rc=$?
        # 416 to a resume request: $part already holds the whole file (get_verified() judges it).
        if [ "$rc" -eq 22 ] && [ "$status" = 416 ]; then
            echo "The server has nothing past the end of $part: it is complete." >&2
            rc=0
        fi
        # 33: the server ignored the Range request; what is in $part cannot be continued.
        if [ "$rc" -eq 33 ]; then
            echo "The server does not support resuming; downloading $url from the start." >&2
            rm -f "$part"
            rc=0
            curl -fL "${progress[@]}" --connect-timeout 30 --retry 3 -o "$part" "$url" || rc=$?
        fi
        # 23: curl could not write the file (disk full, permissions): not a network problem.
        [ "$rc" -eq 23 ] && return 3
    else
        local progress=(-nv)
        [ -t 2 ] && progress=(--progress=bar:force:noscroll)
        # A server that ignores Range answers with the whole file (200): wget -c then skips the
        # bytes $part already holds (GNU wget 1.21, wget2 1.99), so $part stays correct. Whatever
        # else a resume gets wrong, get_verified() catches by the checksum.
        wget -c "${progress[@]}" --connect-timeout=30 --tries=3 -O "$part" "$url" || rc=$?
        [ "$rc" -eq 3 ] && return 3  # wget's file I/O error
    fi
    [ "$rc" -eq 0 ] || return 1
}

# Make sure DATA_DIR/$archive is present, downloading (or resuming) it when it is not.
download() {
    local archive="$1" url="$BASE_URL/$1" dest="$DATA_DIR/$1" rc=0
    if [ -f "$dest" ]; then
        echo "$archive: found $dest, not downloading it again."
        return
    fi
    require_downloader "$url"
    if [ -s "$dest.part" ]; then
        echo "$archive: resuming the download from $url into $dest.part"
    else
        echo "$archive: downloading $url"
    fi
    fetch "$url" "$dest.part" || rc=$?
    if [ "$rc" -eq 3 ]; then
        die "could not write $dest.part while downloading $archive. Check the free space and \
permissions of $DATA_DIR (the archive needs $(archive_size "$archive")), then rerun this script: the \
download resumes where it stopped."
    elif [ "$rc" -ne 0 ]; then
        local resume="rerun this script"
        [ -s "$dest.part" ] && resume="rerun this script: the download resumes from $dest.part"
        die "FMA could not be reached: downloading $url failed (see the message above). Check your \
network connection and $resume. Or download $url \
yourself (browser, another machine), put it in $DATA_DIR/ and rerun: it is verified and unpacked \
from there. Or set FMA_BASE_URL to a mirror. To try the project without FMA, use the offline demo \
dataset: python main.py --demo=True"
    fi
    mv -f "$dest.part" "$dest"
}

# Make sure DATA_DIR/$archive is present and matches its SHA1, or end the run. A resumed download
# that fails the check was most likely spoiled by the resume (a server or proxy that mishandles
# Range requests, a .part left from another file): it is fetched once more from the start.
get_verified() {
    local archive="$1" dest="$DATA_DIR/$1" expected actual resumed=0
    expected="$(expected_sha1 "$archive")"  # first: a bad FMA_CHECKSUMS fails before the download
    [ ! -f "$dest" ] && [ -s "$dest.part" ] && resumed=1
    download "$archive"
    actual="$(sha1_of "$archive")"
    if [ "$actual" != "$expected" ] && [ "$resumed" -eq 1 ]; then
        echo "$archive does not match its SHA1 after resuming (the server may mishandle resumed \
downloads); deleting it and downloading it again from the start." >&2
        rm -f "$dest"
        download "$archive"
        actual="$(sha1_of "$archive")"
    fi
    if [ "$actual" != "$expected" ]; then
        mv -f "$dest" "$dest.bad"
        die "checksum mismatch for $archive: its SHA1 is $actual but should be $expected \
(${FMA_CHECKSUMS:-the official FMA table}). The file was kept as $dest.bad and nothing was \
unpacked. Rerun this script to download it again (delete $dest.bad once you no longer need it); if \
the mismatch persists, the server ($BASE_URL) is serving a different file: try another mirror with \
FMA_BASE_URL, or, if you trust this mirror's files, give their checksums in a sha1sum-format file \
named by FMA_CHECKSUMS."
    fi
}

# The first entry of zip $1 whose name is absolute or climbs out with '..', if any: unzip would strip
# those parts (or refuse the entry), a crafted archive's way to write outside the data folder.
unsafe_entry() {
    local name
    if command -v unzip > /dev/null; then unzip -Z1 "$1"; else
        python3 -c 'import sys, zipfile; print(*zipfile.ZipFile(sys.argv[1]).namelist(), sep="\n")' "$1"
    fi 2> /dev/null | while IFS= read -r name; do
        case "/$name/" in
            //* | */../*) echo "$name"; return ;;
        esac
    done
}

refuse_unsafe() {
    local unsafe
    unsafe="$(unsafe_entry "$DATA_DIR/$1")"
    [ -z "$unsafe" ] || die "$DATA_DIR/$1 holds entries with unsafe paths (absolute, or climbing out \
with '..'), e.g. $unsafe. It was not unpacked, so nothing was written outside $DATA_DIR (or inside \
it). FMA's archives hold no such paths: delete it and download it again from a server you trust \
(FMA_BASE_URL), checking its SHA1."
}

# FMA_COMPLETE=1: unpack only the entries missing from the existing DATA_DIR/$folder, never replacing a file
# there, then mark it complete.
fill_in() {
    local archive="$1" folder="$2" rc=0
    refuse_unsafe "$archive"
    echo "$archive: filling in the files missing from $DATA_DIR/$folder/ ..."
    if command -v unzip > /dev/null; then
        unzip -q -n "$DATA_DIR/$archive" -d "$DATA_DIR" || rc=$?
    else
        python3 -c 'import os, sys, zipfile
archive, root = zipfile.ZipFile(sys.argv[1]), sys.argv[2]
archive.extractall(root, [n for n in archive.namelist() if not os.path.exists(os.path.join(root, n))])' \
            "$DATA_DIR/$archive" "$DATA_DIR" || rc=$?
    fi
    [ "$rc" -eq 0 ] || die "filling in $DATA_DIR/$folder from $DATA_DIR/$archive failed (see the message \
above). Check the free space in $DATA_DIR and rerun; the verified archive is reused."
    echo "$(expected_sha1 "$archive")  $archive" > "$DATA_DIR/$folder/$MARKER"
}

# Unpack into DATA_DIR/$folder.extracting, write the marker there, then rename it into place: the
# rename is atomic, so DATA_DIR/$folder either is complete or does not exist.
extract() {
    local archive="$1" folder="$2" tmp="$DATA_DIR/$2.extracting" rc=0
    refuse_unsafe "$archive"
    EXTRACTING="$tmp"
    rm -rf "$tmp"  # left by an interrupted run; the name is ours alone
    mkdir -p "$tmp"
    echo "$archive: unpacking into $DATA_DIR/$folder/ ..."
    if command -v unzip > /dev/null; then
        unzip -q "$DATA_DIR/$archive" -d "$tmp" || rc=$?
    else  # Python's zipfile reads the bzip2 members FMA uses
        python3 -m zipfile -e "$DATA_DIR/$archive" "$tmp" || rc=$?
    fi
    [ "$rc" -eq 0 ] || die "unpacking $DATA_DIR/$archive failed (see the message above). Check the \
free space in $DATA_DIR and rerun this script; the verified archive is reused, not downloaded again."
    [ -d "$tmp/$folder" ] || die "$DATA_DIR/$archive has no top folder $folder/, so it is not the FMA \
archive this script expects. Delete it and rerun, or check the files served at $BASE_URL."
    echo "$(expected_sha1 "$archive")  $archive" > "$tmp/$folder/$MARKER"
    mv "$tmp/$folder" "$DATA_DIR/$folder"
    rm -rf "$tmp"
    EXTRACTING=""
}

# Refuse to touch a folder we did not create: unpacking must never overwrite or mix with it.
check_foreign_folder() {
    local folder="$1"
    if [ -e "$DATA_DIR/$folder" ] && [ ! -f "$DATA_DIR/$folder/$MARKER" ]; then
        die "$DATA_DIR/$folder exists but has no $MARKER marker, so it was not completely unpacked by \
this script (an earlier manual unzip, or another copy). Move or delete it and rerun this script; or, \
if you are sure it is complete, mark it with: touch $DATA_DIR/$folder/$MARKER"
    fi
}

case "$SUBSET" in
    small | medium | large | full) ;;
    -h | --help) usage 0 ;;
    *) echo "error: unknown FMA subset '$SUBSET'; choose one of small, medium, large, full." >&2; usage ;;
esac
[ "$#" -le 2 ] || usage

FOLDERS=(fma_metadata "fma_$SUBSET")
EXTRACTING=""
trap '[ -z "$EXTRACTING" ] || rm -rf "$EXTRACTING"' EXIT

mkdir -p "$DATA_DIR"
COMPLETE="${FMA_COMPLETE:-0}"
for folder in "${FOLDERS[@]}"; do
    [ "$COMPLETE" = 1 ] || check_foreign_folder "$folder"
done

done_any=0
for folder in "${FOLDERS[@]}"; do
    if [ "$COMPLETE" = 1 ] && [ "$folder" = fma_metadata ] && [ -d "$DATA_DIR/$folder" ]; then
        echo "$folder: kept as it is in $DATA_DIR/$folder/ (FMA_COMPLETE=1 fills in the audio)"
        continue
    elif [ "$COMPLETE" = 1 ] && [ -d "$DATA_DIR/$folder" ]; then
        get_verified "$folder.zip"
        fill_in "$folder.zip" "$folder"
    elif [ -f "$DATA_DIR/$folder/$MARKER" ]; then
        echo "$folder: already in place in $DATA_DIR/$folder/"
        continue
    else
        get_verified "$folder.zip"
        extract "$folder.zip" "$folder"
    fi
    done_any=1
done

if [ "$done_any" -eq 0 ]; then
    echo "FMA $SUBSET is already in place in $DATA_DIR/ (fma_metadata/, fma_$SUBSET/): nothing to do."
else
    echo "FMA $SUBSET is ready in $DATA_DIR/ (fma_metadata/, fma_$SUBSET/<tid[:3]>/<tid>.mp3)."
    echo "The verified archives are kept in $DATA_DIR/; delete the .zip files to free space."
fi
