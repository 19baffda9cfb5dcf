// Stand-in for Smoke's Miscellaneous (echomesh test harness): the byte helpers and constants
// that Cryptography, Messages and SipHash call, written for this harness.
package org.purple.smoke;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.util.zip.GZIPOutputStream;

public final class Miscellaneous {
    public static final int INTEGER_BYTES = 4;
    public static final int LONG_BYTES = 8;
    public static final long LONG_LONG_BYTES = 8L;

    private Miscellaneous() {}

    public static String byteArrayAsHexString(byte[] bytes) {
        if (bytes == null) return "";
        StringBuilder b = new StringBuilder();
        for (byte x : bytes) b.append(String.format("%02x", x & 0xff));
        return b.toString();
    }

    public static String byteArrayAsHexStringDelimited(byte[] bytes, char delimiter, int offset) {
        String hex = byteArrayAsHexString(bytes);
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < hex.length(); i++) {
            if (i > 0 && offset > 0 && i % offset == 0) b.append(delimiter);
            b.append(hex.charAt(i));
        }
        return b.toString();
    }

    public static byte[] compressed(byte[] bytes) {
        if (bytes == null) return null;
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            try (GZIPOutputStream z = new GZIPOutputStream(out)) { z.write(bytes); }
            return out.toByteArray();
        } catch (Exception e) {
            return null;
        }
    }

    public static byte[] intToByteArray(int value) {
        return ByteBuffer.allocate(INTEGER_BYTES).putInt(value).array();
    }

    public static byte[] joinByteArrays(byte[]... data) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (byte[] d : data) {
            if (d == null) return null;
            out.write(d, 0, d.length);
        }
        return out.toByteArray();
    }

    public static byte[] longArrayToByteArray(long[] value) {
        if (value == null) return null;
        ByteBuffer b = ByteBuffer.allocate(LONG_BYTES * value.length);
        for (long v : value) b.putLong(v);
        return b.array();
    }

    public static byte[] longToByteArray(long value) {
        return ByteBuffer.allocate(LONG_BYTES).putLong(value).array();
    }

    public static long byteArrayToLong(byte[] bytes) {
        if (bytes == null || bytes.length != LONG_BYTES) return 0L;
        return ByteBuffer.wrap(bytes).getLong();
    }
}
