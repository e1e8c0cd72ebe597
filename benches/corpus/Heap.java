// A Java heap for the memory corpus: the same small web shop as heap.py
// (catalogue, users, orders, expiring sessions, a cache of rendered JSON
// responses, an inverted index over real text), built from the words of
// the text files under the directories given, until the heap in use
// reaches --target-mib. Then it prints the ready marker and sleeps until
// it is killed. Deterministic for a given input and seed.
//
// The string "heap-token-" + reversed(nonce) exists only in the heap, so a
// memory image can be checked to hold it.
//
// Usage: java Heap --text DIR [--text DIR...] --target-mib N --nonce-file F

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.LocalDateTime;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

public class Heap {
    static final String READY = "WANMIG-CORPUS-READY";
    static final Pattern WORD = Pattern.compile("[A-Za-z][A-Za-z0-9_]{2,}");

    record Address(String street, String city, String zip) {}

    record Product(String sku, String title, String description, double price, List<String> tags) {}

    record LineItem(Product product, int quantity, double price) {}

    static final class Order {
        final String id;
        final LocalDateTime placed;
        final List<LineItem> items = new ArrayList<>();
        String status;
        double total;

        Order(String id, LocalDateTime placed) {
            this.id = id;
            this.placed = placed;
        }
    }

    static final class User {
        final long id;
        final String name;
        final String email;
        final Address address;
        final Map<String, Object> prefs = new HashMap<>();
        final List<Order> orders = new ArrayList<>();
        final List<String> tags = new ArrayList<>();

        User(long id, String name, String email, Address address) {
            this.id = id;
            this.name = name;
            this.email = email;
            this.address = address;
        }
    }

    static String title(String w) {
        return Character.toUpperCase(w.charAt(0)) + w.substring(1);
    }

    static long usedMiB() {
        Runtime rt = Runtime.getRuntime();
        return (rt.totalMemory() - rt.freeMemory()) >> 20;
    }

    public static void main(String[] args) throws IOException, InterruptedException {
        List<Path> dirs = new ArrayList<>();
        long targetMiB = 0;
        String nonceFile = null;
        long seed = 12;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--text" -> dirs.add(Paths.get(args[++i]));
                case "--target-mib" -> targetMiB = Long.parseLong(args[++i]);
                case "--nonce-file" -> nonceFile = args[++i];
                case "--seed" -> seed = Long.parseLong(args[++i]);
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (dirs.isEmpty() || targetMiB <= 0 || nonceFile == null) {
            System.err.println("usage: java Heap --text DIR [--text DIR...] --target-mib N --nonce-file F");
            System.exit(2);
        }
        Random rng = new Random(seed);
        String nonce = Files.readString(Paths.get(nonceFile)).trim();
        String token = "heap-token-" + new StringBuilder(nonce).reverse();

        // The document store and its inverted index.
        long textLimit = Math.max(4L << 20, (targetMiB << 20) / 24);
        List<List<String>> docs = new ArrayList<>();
        long total = 0;
        outer:
        for (Path dir : dirs) {
            List<Path> files;
            try (Stream<Path> s = Files.walk(dir)) {
                files = s.filter(Files::isRegularFile)
                        .filter(p -> p.toString().matches(".*\\.(py|txt|rst|md|h|c|html|java)$"))
                        .sorted()
                        .collect(Collectors.toList());
            }
            for (Path f : files) {
                List<String> lines;
                try {
                    lines = List.of(new String(Files.readAllBytes(f), StandardCharsets.UTF_8).split("\n"));
                } catch (IOException e) {
                    continue;
                }
                docs.add(lines);
                for (String l : lines) total += l.length();
                if (total >= textLimit) break outer;
            }
        }
        Map<String, List<Integer>> index = new HashMap<>();
        List<String> words = new ArrayList<>();
        List<String> sentences = new ArrayList<>();
        for (int d = 0; d < docs.size(); d++) {
            List<String> lines = docs.get(d);
            for (int n = 0; n < lines.size(); n++) {
                String line = lines.get(n);
                if (line.strip().length() > 30) sentences.add(line.strip());
                Matcher m = WORD.matcher(line);
                while (m.find()) {
                    String w = m.group().toLowerCase();
                    List<Integer> postings = index.get(w);
                    if (postings == null) {
                        postings = new ArrayList<>();
                        index.put(w, postings);
                        words.add(w);
                    }
                    if (postings.size() < 200) postings.add(d << 20 | n);
                }
            }
        }
        if (words.isEmpty() || sentences.isEmpty()) {
            System.err.println("Heap: no text found under " + dirs);
            System.exit(1);
        }

        List<Product> products = new ArrayList<>();
        for (int i = 0; i < Math.max(2000, targetMiB * 20); i++) {
            List<String> tags = new ArrayList<>();
            for (int t = 1 + rng.nextInt(6); t > 0; t--) tags.add(words.get(rng.nextInt(words.size())));
            StringBuilder desc = new StringBuilder();
            for (int s = 1 + rng.nextInt(4); s > 0; s--) {
                desc.append(sentences.get(rng.nextInt(sentences.size()))).append(' ');
            }
            products.add(new Product(String.format("SKU-%06d", i),
                    title(words.get(rng.nextInt(words.size()))) + " " + title(words.get(rng.nextInt(words.size()))),
                    desc.toString(), Math.round(rng.nextDouble() * 90000) / 100.0, tags));
        }

        Map<Long, User> users = new HashMap<>();
        LinkedHashMap<String, Map<String, Object>> sessions = new LinkedHashMap<>();
        LinkedHashMap<String, String> responses = new LinkedHashMap<>();
        LocalDateTime epoch = LocalDateTime.of(2024, 1, 1, 0, 0);
        String[] statuses = {"paid", "shipped", "delivered", "returned"};
        long uid = 0;
        long lastReport = System.nanoTime();
        while (usedMiB() < targetMiB) {
            for (int b = 0; b < 500; b++) {
                uid++;
                String first = title(words.get(rng.nextInt(words.size())));
                String last = title(words.get(rng.nextInt(words.size())));
                User u = new User(uid, first + " " + last,
                        first.toLowerCase() + "." + last.toLowerCase() + uid + "@"
                                + words.get(rng.nextInt(words.size())) + ".example",
                        new Address((1 + rng.nextInt(9999)) + " " + title(words.get(rng.nextInt(words.size()))) + " Street",
                                title(words.get(rng.nextInt(words.size()))), String.format("%05d", rng.nextInt(100000))));
                u.prefs.put("newsletter", rng.nextDouble() < 0.3);
                u.prefs.put("lang", new String[] {"en", "de", "fr", "ja"}[rng.nextInt(4)]);
                for (int t = rng.nextInt(6); t > 0; t--) u.tags.add(words.get(rng.nextInt(words.size())));
                if (uid == 4242) u.tags.add(token);
                users.put(uid, u);
                for (int o = rng.nextInt(5); o > 0; o--) {
                    Order order = new Order("ORD-" + uid + "-" + u.orders.size(), epoch.plusSeconds(rng.nextInt(30_000_000)));
                    for (int i = 1 + rng.nextInt(6); i > 0; i--) {
                        Product p = products.get(rng.nextInt(products.size()));
                        LineItem li = new LineItem(p, 1 + rng.nextInt(5), p.price());
                        order.items.add(li);
                        order.total += li.quantity() * li.price();
                    }
                    order.status = statuses[rng.nextInt(statuses.length)];
                    u.orders.add(order);
                }
                // A session per visit; old ones expire (garbage for the GC).
                Map<String, Object> session = new HashMap<>();
                session.put("user", uid);
                List<String> cart = new ArrayList<>();
                for (int c = rng.nextInt(9); c > 0; c--) cart.add(products.get(rng.nextInt(products.size())).sku());
                session.put("cart", cart);
                session.put("csrf", Long.toHexString(rng.nextLong()) + Long.toHexString(rng.nextLong()));
                sessions.put(Long.toHexString(rng.nextLong()) + Long.toHexString(rng.nextLong()), session);
                while (sessions.size() > 20000) sessions.remove(sessions.keySet().iterator().next());
                // The rendered profile page, as a response cache keeps it.
                StringBuilder json = new StringBuilder();
                json.append("{\n \"user\": {\"id\": ").append(uid).append(", \"name\": \"").append(u.name)
                        .append("\", \"email\": \"").append(u.email).append("\", \"city\": \"")
                        .append(u.address.city()).append("\"},\n \"orders\": [");
                for (Order o : u.orders) {
                    json.append("\n  {\"id\": \"").append(o.id).append("\", \"total\": ")
                            .append(Math.round(o.total * 100) / 100.0).append(", \"status\": \"")
                            .append(o.status).append("\", \"placed\": \"").append(o.placed).append("\", \"items\": [");
                    for (LineItem li : o.items) {
                        json.append("{\"sku\": \"").append(li.product().sku()).append("\", \"title\": \"")
                                .append(li.product().title()).append("\", \"qty\": ").append(li.quantity()).append("}, ");
                    }
                    json.append("]},");
                }
                json.append("\n ]\n}\n");
                responses.put("/users/" + uid, json.toString());
                while (responses.size() > 60000) responses.remove(responses.keySet().iterator().next());
            }
            if (System.nanoTime() - lastReport > 10_000_000_000L) {
                lastReport = System.nanoTime();
                System.out.println("Heap: " + uid + " users, " + usedMiB() + " MiB in use");
            }
        }
        System.out.println("Heap: " + uid + " users, " + products.size() + " products, " + index.size()
                + " index words, " + usedMiB() + " MiB in use");
        System.out.println(READY);
        System.out.flush();
        while (true) {
            Thread.sleep(3_600_000);
        }
    }
}
