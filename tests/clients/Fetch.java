// Requests through portcullis with Java's HttpClient (CONNECT for https:// URLs), as an app
// configured with a proxy does. Run as a single-file program:
//   java -Djavax.net.ssl.trustStore=TS -Djavax.net.ssl.trustStorePassword=changeit \
//        Fetch.java PROXY_HOST PROXY_PORT METHOD URL [BODY] ...   (METHOD URL BODY repeated)
// Each METHOD URL BODY triple is one request ("-" for no body), sent in order by one client.
// Prints one line per request: "<status> <body>" or "error <message>".
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Fetch {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress(args[0], Integer.parseInt(args[1]))))
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(20))
            .build();
        for (int i = 2; i + 2 < args.length + 1; i += 3) {
            String method = args[i], url = args[i + 1], body = args[i + 2];
            HttpRequest.BodyPublisher publisher = body.equals("-")
                ? HttpRequest.BodyPublishers.noBody()
                : HttpRequest.BodyPublishers.ofString(body);
            HttpRequest request = HttpRequest.newBuilder(URI.create(url))
                .method(method, publisher)
                .timeout(Duration.ofSeconds(30))
                .build();
            try {
                HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
                System.out.println(response.statusCode() + " " + response.body().replace('\n', ' '));
            } catch (Exception e) {
                System.out.println("error " + e);
            }
        }
    }
}
