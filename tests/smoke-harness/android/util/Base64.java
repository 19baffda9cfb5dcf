// Stand-in for android.util.Base64 (echomesh test harness; not Smoke's code).
// DEFAULT wraps at 76 characters and ends with a newline, as Android does.
package android.util;

public final class Base64 {
    public static final int DEFAULT = 0;
    public static final int NO_PADDING = 1;
    public static final int NO_WRAP = 2;
    public static final int CRLF = 4;
    public static final int URL_SAFE = 8;

    private Base64() {}

    public static String encodeToString(byte[] input, int flags) {
        return new String(encode(input, flags), java.nio.charset.StandardCharsets.US_ASCII);
    }

    public static byte[] encode(byte[] input, int flags) {
        java.util.Base64.Encoder e = (flags & URL_SAFE) != 0
            ? java.util.Base64.getUrlEncoder() : java.util.Base64.getEncoder();
        if ((flags & NO_PADDING) != 0) e = e.withoutPadding();
        String s = e.encodeToString(input);
        if ((flags & NO_WRAP) == 0) {
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < s.length(); i += 76) {
                b.append(s, i, Math.min(s.length(), i + 76));
                b.append((flags & CRLF) != 0 ? "\r\n" : "\n");
            }
            s = b.toString();
        }
        return s.getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    }

    public static byte[] decode(String s, int flags) {
        return decode(s.getBytes(java.nio.charset.StandardCharsets.US_ASCII), flags);
    }

    public static byte[] decode(byte[] input, int flags) {
        StringBuilder b = new StringBuilder();
        for (byte c : input) {
            if (c != '\n' && c != '\r' && c != ' ' && c != '\t') b.append((char) c);
        }
        String s = b.toString();
        if ((flags & URL_SAFE) != 0) s = s.replace('-', '+').replace('_', '/');
        try {
            return java.util.Base64.getDecoder().decode(s);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("bad base-64", e);
        }
    }
}
