// Stand-in for android.net.Uri (echomesh test harness): only parse().
package android.net;

public final class Uri {
    public final String path;

    private Uri(String path) { this.path = path; }

    public static Uri parse(String s) { return new Uri(s.startsWith("file://") ? s.substring(7) : s); }
}
