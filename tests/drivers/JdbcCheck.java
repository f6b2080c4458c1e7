// pgjdbc through pgtenant: server-prepared statements (prepareThreshold=1),
// a batch insert in a transaction, and setQueryTimeout (a cancel request).
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class JdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + System.getenv("PGT_PORT") + "/" + System.getenv("PGT_DB")
                + "?prepareThreshold=1&sslmode=disable";
        String password = System.getenv("PGT_PASSWORD");
        try (Connection acme = DriverManager.getConnection(url, "app.acme", password);
             Connection umbrella = DriverManager.getConnection(url, "app.umbrella", password)) {
            PreparedStatement a = acme.prepareStatement("SELECT name FROM organizations WHERE tenant_id = ?");
            PreparedStatement u = umbrella.prepareStatement("SELECT count(*) FROM products WHERE price > ?");
            for (int i = 0; i < 20; i++) {
                a.setString(1, "acme");
                try (ResultSet rs = a.executeQuery()) {
                    check(rs.next() && rs.getString(1).equals("Acme Inc."), "acme's organization");
                }
                u.setInt(1, 15);
                try (ResultSet rs = u.executeQuery()) {
                    check(rs.next() && rs.getLong(1) == 1, "umbrella's products above 15");
                }
            }
            acme.setAutoCommit(false);
            try (PreparedStatement ins = acme.prepareStatement("INSERT INTO products (name, price) VALUES (?, ?)")) {
                for (int i = 0; i < 3; i++) {
                    ins.setString(1, "jdbc " + i);
                    ins.setInt(2, i);
                    ins.addBatch();
                }
                int[] done = ins.executeBatch();
                check(done.length == 3, "batch of 3");
            }
            acme.commit();
            acme.setAutoCommit(true);
            check(count(acme, "SELECT count(*) FROM products") == 5, "acme sees its batch");
            check(count(umbrella, "SELECT count(*) FROM products") == 2, "umbrella does not");
            try (Statement s = acme.createStatement()) {
                s.execute("DELETE FROM products WHERE name LIKE 'jdbc %'");
            }
            try (Statement s = umbrella.createStatement()) {
                s.setQueryTimeout(1);
                long started = System.nanoTime();
                try {
                    s.execute("SELECT pg_sleep(10)");
                    throw new AssertionError("pg_sleep was not cancelled");
                } catch (SQLException e) {
                    check("57014".equals(e.getSQLState()), "query_canceled, got " + e.getSQLState());
                }
                check(System.nanoTime() - started < 5_000_000_000L, "cancelled in time");
            }
            check(count(umbrella, "SELECT 1") == 1, "session usable after cancel");
        }
        System.out.println("jdbc ok");
    }
}
