// A Java Live Stream consumer shaped like Adobe's sample client:
// HttpURLConnection + GZIPInputStream + BufferedReader, 60 s read timeout.
// usage: java JavaConsumer.java URL COUNT  -> prints COUNT hit sequence numbers, then exits
import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.math.BigInteger;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.GZIPInputStream;

public class JavaConsumer {
    private static final Pattern HIT_ID_LOW = Pattern.compile("\"hitIdLow\":(\\d+)");
    private static final BigInteger SEQ_BASE = BigInteger.ONE.shiftLeft(60);

    public static void main(String[] args) throws Exception {
        HttpURLConnection conn = (HttpURLConnection) new URL(args[0]).openConnection();
        conn.setRequestProperty("Accept-Encoding", "gzip");
        conn.setReadTimeout(60_000);
        int count = Integer.parseInt(args[1]);
        if (conn.getResponseCode() != 200) {
            System.err.println("status " + conn.getResponseCode());
            System.exit(2);
        }
        InputStream body = conn.getInputStream();
        if ("gzip".equals(conn.getContentEncoding())) {
            body = new GZIPInputStream(body);
        }
        try (BufferedReader in = new BufferedReader(new InputStreamReader(body, StandardCharsets.UTF_8))) {
            int seen = 0;
            for (String line; (line = in.readLine()) != null; ) {
                if (line.isEmpty()) continue; // empty records and heartbeats
                Matcher m = HIT_ID_LOW.matcher(line);
                if (!m.find()) continue;
                // ids exceed 2^53: BigInteger, never double
                System.out.println(new BigInteger(m.group(1)).subtract(SEQ_BASE));
                if (++seen == count) {
                    System.exit(0);
                }
            }
        }
        System.exit(1);
    }
}
